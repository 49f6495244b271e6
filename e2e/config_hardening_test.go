package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

// TestConfigHardening: a reload to a file that hung or killed the daemon
// (issue 13) is refused with the reason, and the running daemon, its
// kernel state and its reactions are untouched: a FIFO put at the config
// path, /dev/zero linked there, nesting and dotted-key bombs and 100,001
// policies. Then a cut uplink is still noticed at once. `wanpin run` on a
// FIFO or /dev/zero exits at once.
func TestConfigHardening(t *testing.T) {
	l := newLab(t, 2)
	good := fmt.Sprintf(twoUplinks, 1, 1) + `
[[policy]]
name = "web"
protocol = "tcp"
ports = ["80", "443"]
destinations = ["203.0.113.0/24", "2001:db8:ff::/64"]
uplinks = ["isp2"]
`
	// `wanpin run` on a FIFO or /dev/zero exits at once, before it touches
	// anything (coreutils' timeout only bounds a regression).
	fifo := filepath.Join(t.TempDir(), "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, "/dev/zero"} {
		start := time.Now()
		out, err := l.Exec(l.Router, "timeout", "20", wanpinBin, "run", "--config", path)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, path+": not a regular file") {
			t.Errorf("wanpin run --config %s: %v, %q; want exit 1 saying it is not a regular file", path, err, out)
		}
		t.Logf("wanpin run --config %s: %v in %v: %s", path, err, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}
	if got := kernelState(t, l); got != "" {
		t.Errorf("wanpin run left state behind:\n%s", got)
	}

	d := startWanpin(t, l, good)
	pid := d.proc.Pid()
	rssBefore := residentKB(t, pid)
	before := kernelState(t, l)
	rawBefore := rawState(t, d)

	// put replaces whatever is at the config path: a write through a
	// symlink to /dev/zero or into a FIFO is not what is meant.
	put := func(make func(path string) error) func() {
		return func() {
			if err := os.Remove(d.cfgPath); err != nil {
				t.Fatal(err)
			}
			if err := make(d.cfgPath); err != nil {
				t.Fatal(err)
			}
		}
	}
	text := func(s string) func() {
		return put(func(path string) error { return os.WriteFile(path, []byte(s), 0o644) })
	}
	var policies strings.Builder
	policies.WriteString(good)
	for i := range 100001 {
		fmt.Fprintf(&policies, "[[policy]]\nname = \"p%d\"\nprotocol = \"tcp\"\nports = [\"%d\"]\n", i, i%65535+1)
	}
	nesting := fmt.Sprintf("nesting deeper than %d levels", config.MaxDepth)
	parts := fmt.Sprintf("a key of more than %d dotted parts", config.MaxDepth)
	rejected := 0
	for _, c := range []struct {
		name string
		put  func()
		want string // in the reload's error, after the file's name
	}{
		{"FIFO", put(func(p string) error { return syscall.Mkfifo(p, 0o644) }), ": not a regular file: it is a named pipe (FIFO)"},
		{"/dev/zero", put(func(p string) error { return os.Symlink("/dev/zero", p) }), ": not a regular file: it is a character device"},
		{"100k nested arrays", text("k = " + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + "\n"), ":1: " + nesting},
		{"100k nested inline tables", text("k = " + strings.Repeat("{a=", 100000) + "1" + strings.Repeat("}", 100000) + "\n"), ":1: " + nesting},
		{"20,000 dotted keys", text(strings.Repeat("a.", 20000) + "b = 1\n"), ":1: " + parts},
		{"40 KB header", text("[" + strings.Repeat("a.", 20000) + "b]\n"), ":1: " + parts},
		{"100,001 policies", text(policies.String()), fmt.Sprintf("%d policies", config.MaxPolicies)},
	} {
		c.put()
		out, code, took := reloadWithin(t, d)
		rejected++
		d.waitFor("reload rejected", rejected, 5*time.Second)
		t.Logf("%s: reload exit %d in %v: %s", c.name, code, took.Round(time.Millisecond), strings.TrimSpace(out))
		if code == 0 || !strings.Contains(out, d.cfgPath) || !strings.Contains(out, c.want) {
			t.Errorf("%s: reload exit %d, %q; want it refused saying %q", c.name, code, out, c.want)
		}
		// SIGHUP takes the same path, without a caller to wait for it.
		if err := d.proc.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		rejected++
		d.waitFor("reload rejected", rejected, 5*time.Second)
		if d.proc.Exited() || d.proc.Pid() != pid {
			t.Fatalf("%s: the daemon is gone:\n%s", c.name, d.log())
		}
		if got := kernelState(t, l); got != before {
			t.Errorf("%s: kernel state changed:\n--- now\n%s\n--- before\n%s", c.name, got, before)
		}
		if got := rawState(t, d); got != rawBefore {
			t.Errorf("%s: nft table or ip rules changed:\n--- now\n%s\n--- before\n%s", c.name, got, rawBefore)
		}
		if out, code := d.cli(0, "status"); code != 0 || !strings.Contains(out, "isp2") {
			t.Errorf("%s: status: exit %d, %s", c.name, code, out)
		}
	}
	rss := residentKB(t, pid)
	t.Logf("daemon resident: %d kB before the bad reloads, %d kB after", rssBefore, rss)
	// Each of these files took it past 4 GB before.
	if rss > 256<<10 {
		t.Errorf("daemon resident %d kB after the bad reloads", rss)
	}
	if strings.Contains(d.log(), "fatal error") || strings.Contains(d.log(), "panic") {
		t.Errorf("the daemon crashed:\n%s", d.log())
	}

	// It still reacts: a cut uplink is noticed at once.
	start := time.Now()
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink down", 1, 5*time.Second)
	t.Logf("uplink down %v after the cut", time.Since(start).Round(time.Millisecond))

	// And a good file is taken again.
	text(good)()
	if out, code, _ := reloadWithin(t, d); code != 0 {
		t.Errorf("reload of the good file: exit %d, %s", code, out)
	}
}

// reloadWithin runs `wanpin reload` against d and fails the test if it has
// not finished within a deadline far above what it needs: a reload stuck
// on a FIFO is what is tested.
func reloadWithin(t *testing.T, d *daemon) (out string, code int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wanpinBin, "reload")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr)
	start := time.Now()
	b, err := cmd.CombinedOutput()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("wanpin reload still running after 30 s: %s\nwanpin log:\n%s", b, d.log())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("wanpin reload: %v", err)
	}
	return string(b), code, took
}

// rawState is the daemon's nftables table and the ip rules of both
// families as listed, but for the counters' values (the lab's own packets
// may move them).
func rawState(t *testing.T, d *daemon) string {
	t.Helper()
	nft := run(t, d.l, d.l.Router, "nft", "list", "table", "inet", "wanpin")
	nft = regexp.MustCompile(`counter packets \d+ bytes \d+`).ReplaceAllString(nft, "counter")
	return nft + run(t, d.l, d.l.Router, "ip", "-4", "rule") + run(t, d.l, d.l.Router, "ip", "-6", "rule")
}

// residentKB is the process's resident memory.
func residentKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
