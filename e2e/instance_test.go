package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/core"
)

// TestSecondDaemonRefused: a second `wanpin run` in the router's
// namespace exits non-zero at once, naming the first one's pid, and the
// first daemon's state is untouched (its SIGTERM used to remove the
// first one's rules and routes).
func TestSecondDaemonRefused(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	snapshot := func() string {
		return run(t, l, l.Router, "nft", "list", "table", "inet", "wanpin") +
			run(t, l, l.Router, "ip", "rule") + run(t, l, l.Router, "ip", "route", "show", "table", "all")
	}
	// Counters move with traffic: compare without them.
	strip := func(s string) string {
		var out []string
		for _, line := range strings.Split(s, "\n") {
			if !strings.Contains(line, "counter packets") {
				out = append(out, line)
			}
		}
		return strings.Join(out, "\n")
	}
	before := strip(snapshot())
	start := time.Now()
	out, err := l.Exec(l.Router, "timeout", "10", "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "run", "--config", d.cfgPath)
	took := time.Since(start)
	if err == nil {
		t.Fatalf("a second wanpin run succeeded:\n%s", out)
	}
	if !strings.Contains(out, "another wanpin (pid ") || !strings.Contains(out, "one daemon per router") {
		t.Errorf("the second daemon said:\n%s", out)
	}
	t.Logf("refused in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
	if after := strip(snapshot()); after != before {
		t.Errorf("the first daemon's state changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if strings.Contains(d.log(), "repairing") {
		t.Errorf("the first daemon had to repair its state:\n%s", d.log())
	}
	if counts, err := l.CurlMany(10); err != nil || counts[1]+counts[2] != 10 {
		t.Errorf("the first daemon's balancing after the refusal: %v %v", counts, err)
	}
}

// TestExecCgroupsOwnMaking: `wanpin exec` runs in a cgroup the daemon
// made, fresh and named by it: a cgroup already there (of a number the
// daemon would pick, or with a name no policy may have) is neither used
// nor able to break an apply, and the old call that named its own path
// (`/wanpin-exec/.`, the parent of every exec) no longer exists.
func TestExecCgroupsOwnMaking(t *testing.T) {
	l := newLab(t, 2)
	res, err := cgroups.NewResolver()
	if err != nil || res.Root == "" {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	root := filepath.Join(res.Root, core.ExecRoot)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	var foreign []string
	for _, name := range []string{"1", "odd.name", "2"} {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err == nil {
			foreign = append(foreign, dir)
		}
	}
	t.Cleanup(func() {
		for _, dir := range foreign {
			os.Remove(dir)
		}
	})
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
	out, err := l.Exec(l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "exec", "--uplink", "isp2", "--",
		"sh", "-c", "cat /proc/self/cgroup; curl -sS -m 5 http://203.0.113.10:8080/")
	if err != nil {
		t.Fatalf("wanpin exec: %v\n%s", err, out)
	}
	lines := strings.Fields(out)
	if len(lines) < 2 || l.ISPOf(lines[len(lines)-1]) != 2 {
		t.Errorf("the exec'd command's connection: %q", out)
	}
	for _, name := range []string{"/1\n", "/2\n", "odd.name"} {
		if strings.Contains(out, core.ExecRoot+name) {
			t.Errorf("the command ran in a cgroup that was there before: %q", out)
		}
	}
	// The old signature, a path of the caller's choosing, is refused.
	if out, err := l.Exec(l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, "dbus-send", "--system", "--print-reply",
		"--dest=org.wanpin.Wanpin1", "/org/wanpin/Wanpin1", "org.wanpin.Wanpin1.Exec", "string:isp2", "string:"+core.ExecRoot+"/."); err == nil {
		t.Errorf("Exec with a path was accepted:\n%s", out)
	}
	// Applies go on: a reload applies, with the foreign cgroups still there.
	d.cli(0, "reload")
	d.waitFor("configuration reloaded", 1, 5*time.Second)
	if strings.Contains(d.log(), "applying state") {
		t.Errorf("an apply failed:\n%s", d.log())
	}
	for _, dir := range foreign {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s, made by another, was removed: %v", dir, err)
		}
	}
}

// TestStopDuringLongApply: SIGTERM while the daemon applies the largest
// configuration it accepts (10,000 two-key policies: a rule each, the
// slowest shape) removes its state and exits within 2 s.
func TestStopDuringLongApply(t *testing.T) {
	l := newLab(t, 2)
	var cfg strings.Builder
	cfg.WriteString(fmt.Sprintf(twoUplinks, 1, 1))
	for i := range config.MaxPolicies {
		fmt.Fprintf(&cfg, "[[policy]]\nname = \"p%d\"\ndestinations = [\"10.%d.%d.0/24\"]\nprotocol = \"tcp\"\nports = [\"443\"]\nuplinks = [\"isp%d\"]\n",
			i, i>>8, i&0xff, 1+i%2)
	}
	d := newDaemon(t, l, cfg.String())
	logPath := filepath.Join(d.dir, "wanpin-long.log")
	d.logs = append(d.logs, logPath)
	p, err := l.Start(l.Router, logPath, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "run", "--config", d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d.proc = p
	d.waitFor("uplink up", 2, 10*time.Second) // the first apply is under way
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(10 * time.Second); err != nil && !p.Exited() {
		t.Fatalf("still running 10 s after SIGTERM")
	}
	took := time.Since(start)
	d.proc = nil
	t.Logf("exited %v after SIGTERM", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("exited %v after SIGTERM, want within 2 s", took.Round(time.Millisecond))
	}
	if out, err := l.Exec(l.Router, "nft", "list", "table", "inet", "wanpin"); err == nil {
		t.Errorf("the table is still there after SIGTERM:\n%.300s", out)
	}
	if out := run(t, l, l.Router, "ip", "rule"); strings.Contains(out, "proto 119") {
		t.Errorf("rules still there after SIGTERM:\n%s", out)
	}
}
