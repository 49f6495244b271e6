package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/core"
)

// execDirs lists the cgroups under /wanpin-exec (other tests' daemons
// may make some meanwhile: callers compare what their own calls added).
func execDirs(t *testing.T) []string {
	t.Helper()
	res, err := cgroups.NewResolver()
	if err != nil || res.Root == "" {
		t.Skipf("no cgroup v2: %v", err)
	}
	m, _ := filepath.Glob(filepath.Join(res.Root, core.ExecRoot, "*"))
	var out []string
	for _, p := range m {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out
}

// A refused `wanpin exec` (an unknown uplink, or one that is down) fails
// within a second with the reason, runs nothing and leaves no cgroup
// behind; before, the caller was moved into a fresh cgroup first, which
// then could not be removed and was never reaped, and an exec to a down
// uplink ran with every connection refused.
func TestExecRefusedLeavesNothing(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
	mark := filepath.Join(t.TempDir(), "ran")
	wexec := func(uplink string) (string, int, time.Duration) {
		before := execDirs(t)
		start := time.Now()
		out, code := wanpinIn(t, d, "exec", "--uplink", uplink, "--", "touch", mark)
		took := time.Since(start)
		// Give the daemon's reaper (every second or so) the time to
		// remove what it knows of.
		waitUntil(t, 5*time.Second, "no new exec cgroup", func() (bool, string) {
			var added []string
			for _, p := range execDirs(t) {
				if !slices.Contains(before, p) {
					added = append(added, p)
				}
			}
			return len(added) == 0, fmt.Sprint(added)
		})
		return out, code, took
	}
	if out, code, took := wexec("nosuch"); code == 0 || !strings.Contains(out, `no uplink named "nosuch"`) || took > time.Second {
		t.Errorf("exec to an unknown uplink: exit %d in %v: %q", code, took, out)
	}
	if out, code := d.cli(0, "down", "isp2"); code != 0 {
		t.Fatalf("wanpin down isp2: %d %s", code, out)
	}
	if out, code, took := wexec("isp2"); code == 0 || !strings.Contains(out, "is down") || took > time.Second {
		t.Errorf("exec to a down uplink: exit %d in %v: %q", code, took, out)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Errorf("a refused exec ran its command")
	}
	if out, code := d.cli(0, "up", "isp2"); code != 0 {
		t.Fatalf("wanpin up isp2: %d %s", code, out)
	}
	if out, code, _ := wexec("isp2"); code != 0 {
		t.Errorf("exec to an up uplink: exit %d: %q", code, out)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("the exec'd command did not run: %v", err)
	}
}

// A PPP up event whose peer (the uplink's gateway to be) is multicast,
// loopback, unspecified or zoned is refused within a second, and the
// running state stays: before, it was accepted, and then every routing
// apply failed ("invalid argument", retried every second) or, for the
// zoned one, drift repair re-installed the route twice a second forever.
func TestPPPEventBadPeerRefused(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	for _, peer := range []string{"224.0.0.1", "0.0.0.0", "127.0.0.1", "::1", "fe80::1%wan1"} {
		start := time.Now()
		out, code := d.cli(0, "event", "up", "wan1", "--peer", peer)
		if took := time.Since(start); code == 0 || !strings.Contains(out, "peer") || took > time.Second {
			t.Errorf("event up wan1 --peer %s: exit %d in %v: %q", peer, code, took, out)
		}
	}
	// Drift is checked every half second: a repair or failed apply
	// would show within 1.5 s.
	if bad, seen, _ := poll(1500*time.Millisecond, func() (bool, string) {
		lg := d.log()
		return strings.Contains(lg, "repairing state") || strings.Contains(lg, "applying state"), lg
	}); bad {
		t.Errorf("a refused event changed the state:\n%s", seen)
	}
	if out, code := d.cli(0, "status"); code != 0 || strings.Count(out, " up ") != 4 {
		t.Errorf("status after the refused events: %d\n%s", code, out)
	}
	if out, code := d.cli(0, "event", "up", "wan1", "--peer", "fe80::1"); code != 0 {
		t.Errorf("event up with a link-local peer: exit %d: %q", code, out)
	}
}

// A stop right after an exec ended (before the reaper came round) leaves
// no cgroup behind: a later daemon never touches a cgroup it did not
// make, so it stayed until the reboot.
func TestStopRemovesEndedExecCgroup(t *testing.T) {
	l := newLab(t, 2)
	res, err := cgroups.NewResolver()
	if err != nil || res.Root == "" {
		t.Skipf("no cgroup v2: %v", err)
	}
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	// dbus-send as the caller: moved into the cgroup, it exits at once.
	out, err := l.Exec(l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, "dbus-send", "--system", "--print-reply",
		"--dest=org.wanpin.Wanpin1", "/org/wanpin/Wanpin1", "org.wanpin.Wanpin1.Exec", "string:isp1")
	if err != nil {
		t.Fatalf("Exec: %v\n%s", err, out)
	}
	var path string
	for _, f := range strings.Fields(out) {
		if strings.Contains(f, core.ExecRoot+"/") {
			path = strings.Trim(f, `"`)
		}
	}
	if path == "" {
		t.Fatalf("no cgroup in the answer: %q", out)
	}
	d.stop(syscall.SIGTERM)
	if _, err := os.Stat(filepath.Join(res.Root, path)); err == nil {
		t.Errorf("%s left after the stop", path)
		os.Remove(filepath.Join(res.Root, path))
	}
}
