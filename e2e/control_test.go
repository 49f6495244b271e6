package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
)

// TestStatusAndPermissions: status as root and as an unprivileged user;
// reload and event refused for the latter with a clear message; a CLI that
// cannot reach the daemon says so in one line.
func TestStatusAndPermissions(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 3, 1))
	out, code := d.cli(0, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: %d %s", code, out)
	}
	var s core.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(s.Uplinks) != 2 {
		t.Fatalf("uplinks: %+v", s.Uplinks)
	}
	u := s.Uplinks[0]
	if u.Name != "isp1" || u.Interface != "wan1" || u.State != "up" || u.Address != "198.51.100.2" ||
		u.Gateway != "198.51.100.1" || u.Reason == "" || u.Since.IsZero() || u.Weight != 3 {
		t.Errorf("uplink 1: %+v", u)
	}
	// Pinned counts come from conntrack, counted off the loop at most
	// every daemon.PinnedInterval.
	if _, err := l.CurlMany(10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "10 pinned connections in status", func() (bool, string) {
		out, _ = d.cli(0, "status", "--json")
		json.Unmarshal([]byte(out), &s)
		return s.Uplinks[0].Pinned+s.Uplinks[1].Pinned >= 10, fmt.Sprintf("%d + %d", s.Uplinks[0].Pinned, s.Uplinks[1].Pinned)
	})
	table, code := d.cli(0, "status")
	if code != 0 || !strings.Contains(table, "UPLINK") || !strings.Contains(table, "isp2") {
		t.Errorf("status table: %d\n%s", code, table)
	}
	t.Logf("wanpin status:\n%s", table)

	// An unprivileged user (nobody).
	if out, code := d.cli(65534, "status"); code != 0 || !strings.Contains(out, "isp1") {
		t.Errorf("status as nobody: %d %s", code, out)
	}
	for _, args := range [][]string{{"reload"}, {"event", "down", "wan1"}} {
		out, code := d.cli(65534, args...)
		if code == 0 || !strings.Contains(out, "permission denied") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("%v as nobody: exit %d, %q; want one line saying permission denied", args, code, out)
		}
	}
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Errorf("reload as root: %d %s", code, out)
	}
	// A bad file: reload refused with the file's line, nothing changes.
	// (A blank first line: WANPIN_E2E_MPTCP puts its key there.)
	d.writeConfig("\n[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\nweight = 0\n")
	out, code = d.cli(0, "reload")
	if code == 0 || !strings.Contains(out, ":5: uplink[1].weight") {
		t.Errorf("reload of a bad file: %d %q", code, out)
	}
	if counts, err := l.CurlMany(40); err != nil || counts[2] == 0 {
		t.Errorf("after a rejected reload: %v %v (uplink 2 must still be used)", counts, err)
	}

	// No daemon: one line, non-zero.
	d.stop(15)
	out, code = d.cli(0, "status")
	if code == 0 || !strings.Contains(out, "not running") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("status without a daemon: %d %q", code, out)
	}
}

// TestPPPHooks: an interface named ppp0 (a veth here: there is no PPP
// driver) announced through hooks/ppp/ip-up, called exactly as pppd calls
// it, becomes an up uplink with the peer as gateway; a re-dial with a new
// address leaves no entry NATed to the old one; ip-down and the removal
// take it down.
func TestPPPHooks(t *testing.T) {
	l := newLab(t, 3)
	r := l.Router
	// ISP 3's link becomes "ppp0": a /32 with no peer, no default route.
	redial := func(local string) {
		t.Helper()
		// A new session is a new interface (a new ifindex), as with pppd.
		if _, err := l.Exec(r, "ip", "link", "show", "wan3"); err == nil {
			run(t, l, r, "ip", "link", "del", "wan3")
		}
		l.Exec(r, "ip", "link", "del", "ppp0")
		run(t, l, r, "ip", "link", "add", "ppp0", "type", "veth", "peer", "cust", "netns", l.ISP(3))
		run(t, l, r, "sh", "-c", fmt.Sprintf("ip addr add %s/32 dev ppp0 && ip link set ppp0 up", local))
		run(t, l, l.ISP(3), "sh", "-c", fmt.Sprintf(
			`ip addr add 198.51.100.17/29 dev cust && ip link set cust up && nft flush chain inet isp in && nft add rule inet isp in iifname "cust" ip saddr != %s counter name spoofed drop`, local))
	}
	redial("198.51.100.18")
	d := startWanpin(t, l, `
[[uplink]]
name = "isp1"
interface = "wan1"
tier = 2

[[uplink]]
name = "dsl"
interface = "ppp0"
`)
	d.waitFor(`uplink down" uplink=dsl`, 1, 5*time.Second)
	hook := func(which, local string) time.Duration {
		t.Helper()
		hooks, _ := filepath.Abs("../hooks/ppp")
		// pppd: cleared environment, minimal PATH, positional arguments
		// and PPP_* variables. The test's bus address stands in for the
		// system bus socket, and PATH includes where the binary is.
		cmd := exec.Command(filepath.Join(hooks, which), "ppp0", "/dev/pts/3", "115200", local, "198.51.100.17", "dsl")
		cmd.Env = []string{"PATH=" + filepath.Dir(wanpinBin) + ":/usr/sbin:/usr/bin:/sbin:/bin",
			"PPP_IFACE=ppp0", "PPP_TTY=/dev/pts/3", "PPP_SPEED=115200", "PPP_LOCAL=" + local,
			"PPP_REMOTE=198.51.100.17", "PPP_IPPARAM=dsl", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr}
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", which, err, out)
		}
		took := time.Since(start)
		if took > time.Second {
			t.Errorf("%s took %v, pppd waits for it", which, took)
		}
		return took
	}
	took := hook("ip-up", "198.51.100.18")
	t.Logf("ip-up returned in %v", took.Round(time.Millisecond))
	d.waitFor(`uplink up" uplink=dsl`, 1, 5*time.Second)
	out, _ := d.cli(0, "status", "--json")
	var s core.Status
	json.Unmarshal([]byte(out), &s)
	if dsl := s.Uplinks[1]; dsl.State != "up" || dsl.Gateway != "198.51.100.17" || dsl.Address != "198.51.100.18" {
		t.Errorf("after ip-up: %+v", dsl)
	}
	counts, err := l.CurlMany(10)
	if err != nil || counts[3] != 10 {
		t.Fatalf("through ppp0: %v %v", counts, err)
	}
	started := time.Now()
	f, err := l.StartUDPFlow(40001, "203.0.113.10", 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The flow runs through ppp0 before the re-dial.
	if a := waitAnswers(t, f, 1, started, "the UDP flow before the re-dial"); a[len(a)-1].Seen != "198.51.100.18" {
		t.Fatalf("UDP flow before the re-dial seen as %s, want ppp0's 198.51.100.18", a[len(a)-1].Seen)
	}

	// Re-dial: ip-down, the interface goes, comes back with a new address.
	hook("ip-down", "198.51.100.18")
	d.waitFor(`uplink down" uplink=dsl`, 2, 5*time.Second)
	redial("198.51.100.19")
	hook("ip-up", "198.51.100.19")
	d.waitFor(`uplink up" uplink=dsl`, 2, 5*time.Second)
	redialled := time.Now()
	// The entries NATed to the address ppp0 lost are flushed (the log
	// line follows the flush), and the flow goes on answering after the
	// new session came up: 15 answers, 300 ms of its 20 ms beat.
	d.waitFor(`conntrack flushed" uplink=dsl address=198.51.100.18 `, 1, 5*time.Second)
	waitAnswers(t, f, 15, redialled, "the UDP flow after the re-dial")
	if ct, _ := l.Exec(r, "sh", "-c", "conntrack -L 2>/dev/null"); strings.Contains(ct, "dst=198.51.100.18 ") {
		t.Errorf("entries NATed to the old address remain:\n%s", ct)
	}
	// The UDP flow lived on: when ip-down flushed its entry it moved to
	// the live uplink and stays pinned there (it does not jump back).
	ans := f.Answers()
	if len(ans) == 0 || time.Since(ans[len(ans)-1].At) > 200*time.Millisecond {
		t.Fatalf("UDP flow died across the re-dial (%d answers)", len(ans))
	}
	if last := ans[len(ans)-1].Seen; last == "198.51.100.18" || l.ISPOf(last) != 1 {
		t.Errorf("UDP flow after the re-dial seen as %s, want the live uplink 1", last)
	}
	// New connections use the re-dialled uplink with its new address.
	l.ResetSeen()
	if counts, err := l.CurlMany(10); err != nil || counts[0] != 10 {
		t.Errorf("after the re-dial: %v %v", counts, err)
	}
	if seen := l.Seen(); seen["198.51.100.19"] != 10 {
		t.Errorf("after the re-dial the server saw %v, want 198.51.100.19", seen)
	}
	// ip-down and removal: down.
	hook("ip-down", "198.51.100.19")
	run(t, l, r, "ip", "link", "del", "ppp0")
	d.waitFor(`uplink down" uplink=dsl`, 3, 5*time.Second)
	if counts, err := l.CurlMany(10); err != nil || counts[1] != 10 {
		t.Errorf("after ppp0 went away: %v %v", counts, err)
	}
	// The hooks never hold pppd up or fail the session, even with no
	// daemon to talk to.
	d.stop(15)
	hook("ip-up", "198.51.100.20")
	hook("ip-down", "198.51.100.20")
}

// TestMaintenance: `wanpin down NAME` takes an uplink out of service
// (reported in status), `wanpin up NAME` puts it back; only root may.
func TestMaintenance(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	if out, code := d.cli(65534, "down", "isp1"); code == 0 || !strings.Contains(out, "permission denied") {
		t.Errorf("down as nobody: %d %q", code, out)
	}
	if out, code := d.cli(0, "down", "isp1"); code != 0 {
		t.Fatalf("down: %d %s", code, out)
	}
	var s core.Status
	out, _ := d.cli(0, "status", "--json")
	json.Unmarshal([]byte(out), &s)
	if s.Uplinks[0].State != "down" || !strings.Contains(s.Uplinks[0].Reason, "out of service") {
		t.Errorf("status after down: %+v", s.Uplinks[0])
	}
	if counts, err := l.CurlMany(30); err != nil || counts[2] != 30 {
		t.Errorf("isp1 out of service: %v %v", counts, err)
	}
	if out, code := d.cli(0, "up", "isp1"); code != 0 {
		t.Fatalf("up: %d %s", code, out)
	}
	if counts, err := l.CurlMany(60); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("isp1 back in service: %v %v", counts, err)
	}
	if out, code := d.cli(0, "down", "nosuch"); code == 0 || !strings.Contains(out, `no uplink named "nosuch"`) {
		t.Errorf("down of an unknown uplink: %d %q", code, out)
	}
}

// TestExplain: `wanpin explain` agrees with what the server sees.
func TestExplain(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+`
tier = 2

[[policy]]
name = "guest"
sources = ["192.0.2.20/32"]
uplinks = ["isp2"]

[[policy]]
name = "strict"
protocol = "udp"
ports = ["8081"]
uplinks = ["isp2"]
fallback = "none"
`)
	explain := func(args ...string) string {
		t.Helper()
		full := append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin, "explain", "--config", d.cfgPath}, args...)
		return run(t, l, l.Router, full...)
	}
	out := explain("--src", "192.0.2.20", "--dst", "203.0.113.10", "--dport", "8080")
	if !strings.Contains(out, `policy: "guest"`) || !strings.Contains(out, "100%  isp2") || !strings.Contains(out, "dev wan2 via 198.51.100.9") {
		t.Errorf("guest flow:\n%s", out)
	}
	if got := strings.TrimSpace(run(t, l, l.LAN, "curl", "-sS", "-m", "5", "--interface", "192.0.2.20", "http://203.0.113.10:8080/")); l.ISPOf(got) != 2 {
		t.Errorf("the server saw the guest flow from %s", got)
	}
	out = explain("--src", "192.0.2.10", "--dst", "203.0.113.10", "--dport", "8080")
	if !strings.Contains(out, "policy: none") || !strings.Contains(out, "100%  isp1") || !strings.Contains(out, "dev wan1 via 198.51.100.1") {
		t.Errorf("default flow:\n%s", out)
	}
	if got := strings.TrimSpace(run(t, l, l.LAN, "curl", "-sS", "-m", "5", "http://203.0.113.10:8080/")); l.ISPOf(got) != 1 {
		t.Errorf("the server saw the default flow from %s", got)
	}
	d.cli(0, "down", "isp2")
	out = explain("--src", "192.0.2.10", "--dst", "203.0.113.10", "--proto", "udp", "--dport", "8081")
	if !strings.Contains(out, `policy: "strict"`) || !strings.Contains(out, "rejected") {
		t.Errorf("strict flow with isp2 down:\n%s", out)
	}
	if got, _ := l.UDPExchange(40100, "203.0.113.10", 500*time.Millisecond); got != "" {
		t.Errorf("strict flow with isp2 down reached the server as %s", got)
	}
}

// TestExec: `wanpin exec --uplink isp2 -- CMD` sends every connection of
// CMD (and its children) through isp2 while the router's default is isp1.
func TestExec(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
	wexec := func(args ...string) (string, error) {
		full := append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin, "exec", "--uplink", "isp2", "--"}, args...)
		return l.Exec(l.Router, full...)
	}
	out, err := wexec("sh", "-c", "for i in 1 2 3 4 5; do curl -sS -m 5 http://203.0.113.10:8080/; done")
	if err != nil {
		t.Fatalf("wanpin exec: %v\n%s", err, out)
	}
	for _, a := range strings.Fields(out) {
		if l.ISPOf(a) != 2 {
			t.Errorf("a connection of the exec'd command arrived from %s, want ISP 2 (all: %q)", a, out)
		}
	}
	if got := strings.TrimSpace(run(t, l, l.Router, "curl", "-sS", "-m", "5", "http://203.0.113.10:8080/")); l.ISPOf(got) != 1 {
		t.Errorf("the router's other traffic arrived from %s, want ISP 1", got)
	}
	d.waitFor("exec ended", 1, 5*time.Second)
	if out, err := l.Exec(l.Router, "nft", "list", "table", "inet", "wanpin"); err != nil || strings.Contains(out, "exec_") {
		t.Errorf("exec policy left in the table after the command ended")
	}
	if out, code := d.cli(65534, "exec", "--uplink", "isp2", "--", "true"); code == 0 {
		t.Errorf("exec as nobody succeeded: %s", out)
	}
}
