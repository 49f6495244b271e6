package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/netlab"
)

// endpoints is the router's `ip mptcp endpoint show`.
func endpoints(t *testing.T, l *netlab.Lab) string {
	t.Helper()
	return run(t, l, l.Router, "ip", "mptcp", "endpoint", "show")
}

// TestMPTCPEdgeOrphanFamily: a dual-stack router with only IPv4 MPTCP
// connections: its IPv6 endpoints can have no subflow on them (a
// subflow never crosses families), so they are not orphans to refresh;
// an IPv4 subflow reset is still one.
func TestMPTCPEdgeOrphanFamily(t *testing.T) {
	l := newLab(t, 2)
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "5mbit", "burst", "32kb", "latency", "50ms")
	}
	serveZeros(t, l)
	d := startWanpin(t, l, mptcpWanpin)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	out := endpoints(t, l)
	t.Logf("endpoints:\n%s", out)
	if !strings.Contains(out, netlab.UplinkAddr6(1)) {
		t.Skip("no IPv6 endpoints in this lab")
	}
	dl := startDownload(t, l, l.Router, netlab.ServerAddr4, true)
	carries(t, l, "wan1", 256<<10, "uplink 1 carrying the MPTCP download")
	carries(t, l, "wan2", 256<<10, "uplink 2 carrying the MPTCP download")
	// Two refresh periods' worth (orphan after 10 s, counted every 5 s).
	ok, seen, _ := poll(25*time.Second, func() (bool, string) {
		return strings.Contains(d.log(), "mptcp endpoint refreshed"), ""
	})
	_ = seen
	if !ok {
		// A real orphan is still refreshed: uplink 2's IPv4 subflow reset.
		run(t, l, l.Router, "ss", "-K", "-tn", "src", netlab.UplinkAddr4(2))
		d.waitFor(`mptcp endpoint refreshed" addr=`+netlab.UplinkAddr4(2), 1, 30*time.Second)
		carries(t, l, "wan2", 256<<10, "uplink 2 carrying the download again after the refresh")
	}
	dl.Abort()
	if ok {
		var lines []string
		for _, ln := range strings.Split(d.log(), "\n") {
			if strings.Contains(ln, "refreshed") {
				lines = append(lines, ln)
			}
		}
		t.Errorf("with an IPv4 MPTCP download whose subflows are all up, wanpin refreshed endpoints:\n%s", strings.Join(lines, "\n"))
	}
}

// TestMPTCPEdgeRenumber: uplink 1's address changes (a DHCP renumber,
// done here by hand) during an MPTCP download: the old address's
// endpoint goes, the new one's comes, and the download takes uplink 1
// again from its new address.
func TestMPTCPEdgeRenumber(t *testing.T) {
	l := newLab(t, 2)
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "20mbit", "burst", "32kb", "latency", "20ms")
	}
	serveZeros(t, l)
	d := startWanpin(t, l, mptcpWanpin)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	dl := startDownload(t, l, l.Router, netlab.ServerAddr4, true)
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the MPTCP download")
	carries(t, l, "wan2", 1<<20, "uplink 2 carrying the MPTCP download")
	old, moved := netlab.UplinkAddr4(1), "198.51.100.3"
	// The ISP lets the new address through (its filter knows the old one).
	run(t, l, l.ISP(1), "nft", "delete", "table", "inet", "isp")
	run(t, l, l.Router, "sysctl", "-qw", "net.ipv4.conf.wan1.promote_secondaries=1")
	run(t, l, l.Router, "ip", "addr", "add", moved+"/29", "dev", "wan1")
	run(t, l, l.Router, "ip", "addr", "del", old+"/29", "dev", "wan1")
	waitUntil(t, 10*time.Second, "the endpoint to follow the address", func() (bool, string) {
		out := endpoints(t, l)
		return strings.Contains(out, moved+" ") && !strings.Contains(out, old+" "), out
	})
	t.Logf("endpoints after the move:\n%s", endpoints(t, l))
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the download again from its new address")
	dl.More(t, 1<<20, 30*time.Second, "the download after the move")
	dl.Abort()
	d.stop(unix.SIGTERM)
	if out := strings.TrimSpace(endpoints(t, l)); out != "" {
		t.Errorf("endpoints after a clean stop: %q", out)
	}
}

// TestMPTCPEdgeForeign: the admin's limits and endpoints (set before
// wanpin starts, and an id-less one added while it was down after a
// crash) are left alone; wanpin's own come back after the restart, once
// each, and a clean stop removes only its own.
func TestMPTCPEdgeForeign(t *testing.T) {
	l := newLab(t, 2)
	run(t, l, l.Router, "ip", "mptcp", "limits", "set", "subflows", "6", "add_addr_accepted", "5")
	run(t, l, l.Router, "ip", "mptcp", "endpoint", "add", netlab.LANRouter4, "id", "7", "signal")
	d := startWanpin(t, l, mptcpWanpin)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	lim := run(t, l, l.Router, "ip", "mptcp", "limits", "show")
	if !strings.Contains(lim, "add_addr_accepted 5") || !strings.Contains(lim, "subflows 6") {
		t.Errorf("limits after start: %q, want the admin's 6 and 5", lim)
	}
	before := endpoints(t, l)
	t.Logf("endpoints:\n%s", before)
	d.stop(unix.SIGKILL)
	// While wanpin is down: the admin removes one of wanpin's (an uplink's
	// address) and adds one without an id.
	run(t, l, l.Router, "ip", "mptcp", "endpoint", "delete", "id", "254")
	run(t, l, l.Router, "ip", "mptcp", "endpoint", "add", "192.0.2.77", "signal")
	admin := endpoints(t, l)
	t.Logf("endpoints after the admin's changes:\n%s", admin)
	d.start()
	waitUntil(t, 10*time.Second, "wanpin's endpoints back", func() (bool, string) {
		out := endpoints(t, l)
		return strings.Count(out, netlab.UplinkAddr4(2)+" ") == 1 && strings.Count(out, netlab.UplinkAddr4(1)+" ") == 1, out
	})
	after := endpoints(t, l)
	t.Logf("endpoints after the restart:\n%s", after)
	if !strings.Contains(after, "192.0.2.77 id") || !strings.Contains(after, netlab.LANRouter4+" id 7 signal") {
		t.Errorf("the admin's endpoints lost after the restart:\n%s", after)
	}
	d.stop(unix.SIGTERM)
	final := endpoints(t, l)
	t.Logf("endpoints after stop:\n%s", final)
	for _, a := range []string{netlab.UplinkAddr4(1), netlab.UplinkAddr4(2), netlab.UplinkAddr6(1), netlab.UplinkAddr6(2)} {
		if strings.Contains(final, a+" ") {
			t.Errorf("wanpin's %s left after a clean stop:\n%s", a, final)
		}
	}
	if !strings.Contains(final, "192.0.2.77 id") || !strings.Contains(final, netlab.LANRouter4+" id 7 signal") {
		t.Errorf("the admin's endpoints lost at stop:\n%s", final)
	}
	lim = run(t, l, l.Router, "ip", "mptcp", "limits", "show")
	if !strings.Contains(lim, "add_addr_accepted 5") || !strings.Contains(lim, "subflows 6") {
		t.Errorf("limits after stop: %q, want the admin's 6 and 5", lim)
	}
}

// TestMPTCPEdgePolicy: a policy sends the router's connections to the
// server by one uplink only; the subflow from the other's address must
// not be marked by it (nor dropped by the guard), so the download still
// uses both uplinks.
//
// Known defect, not fixed (see the audit's report): the first subflow
// takes its source address from the main table's route before the
// policy's mark re-routes it, and is then source-NATed; the kernel counts
// that address's endpoint as used, so both subflows leave by the
// policy's uplink. WANPIN_E2E_KNOWN=1 runs it.
func TestMPTCPEdgePolicy(t *testing.T) {
	if os.Getenv("WANPIN_E2E_KNOWN") != "1" {
		t.Skip("known defect: WANPIN_E2E_KNOWN=1 runs it")
	}
	for _, u := range []string{"isp1", "isp2"} {
		t.Run(u, func(t *testing.T) { testAuditMPTCPPolicy(t, u) })
	}
}

func testAuditMPTCPPolicy(t *testing.T, by string) {
	l := newLab(t, 2)
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "20mbit", "burst", "32kb", "latency", "20ms")
	}
	serveZeros(t, l)
	d := startWanpin(t, l, mptcpWanpin+`
[[policy]]
name = "server-by-one"
destinations = ["203.0.113.0/24", "2001:db8:ff::/64"]
uplinks = ["`+by+`"]
`)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	for _, dst := range []string{netlab.ServerAddr6, netlab.ServerAddr4} {
		dl := startDownload(t, l, l.Router, dst, true)
		carries(t, l, "wan1", 1<<20, dst+": uplink 1 carrying the MPTCP download")
		t.Logf("subflows:\n%s", run(t, l, l.Router, "ss", "-tnHM", "state", "all", "dport", fmt.Sprint(mptcpPort)))
		carries(t, l, "wan2", 1<<20, dst+": uplink 2 carrying the MPTCP download (a subflow the policy must not take)")
		dl.More(t, 1<<20, 30*time.Second, "the download")
		dl.Abort()
	}
}

// TestMPTCPEdgeIPv6: the router's own IPv6 MPTCP download uses both
// uplinks (each uplink's IPv6 address is an endpoint).
func TestMPTCPEdgeIPv6(t *testing.T) {
	l := newLab(t, 2)
	serveZeros(t, l)
	d := startWanpin(t, l, mptcpWanpin)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	dl := startDownload(t, l, l.Router, netlab.ServerAddr6, true)
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the IPv6 MPTCP download")
	carries(t, l, "wan2", 1<<20, "uplink 2 carrying the IPv6 MPTCP download")
	dl.Abort()
}

// TestAdaptiveAcrossOutage: ISP 2 delivers a quarter of ISP 1's rate;
// its learnt weight stays within 5..100 while it is down, is kept when it
// returns and across a reload that changes neither tier nor bandwidth,
// and the metrics show the weights status shows.
func TestAdaptiveAcrossOutage(t *testing.T) {
	l := newLab(t, 2)
	run(t, l, l.ISP(1), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "40mbit", "burst", "32kb", "latency", "50ms")
	run(t, l, l.ISP(2), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "10mbit", "burst", "32kb", "latency", "50ms")
	d := startWanpin(t, l, adaptiveConfig, "--metrics-listen", "127.0.0.1:9469")
	// An idle window with round trips first: the baseline (a baseline
	// learnt under load is a documented limit).
	waitUntil(t, 10*time.Second, "an idle window with round trips", func() (bool, string) {
		st := statusOf(t, d)
		ok := true
		for _, u := range st.Uplinks {
			ok = ok && u.Evidence == "idle" && u.RTTms > 0
		}
		return ok, estimates(st)
	})
	ld := startLoad(l, 16, 256<<10)
	defer ld.stop()
	check := func(what string) (int, int) {
		w1, w2, st := weightsOf(t, d)
		m := run(t, l, l.Router, "curl", "-sS", "-m", "5", "http://127.0.0.1:9469/metrics")
		m1 := metric(t, m, `wanpin_uplink_weight{interface="wan1",uplink="isp1"}`)
		m2 := metric(t, m, `wanpin_uplink_weight{interface="wan2",uplink="isp2"}`)
		for _, w := range []int{w1, w2} {
			if w < 5 || w > 100 {
				t.Errorf("%s: a weight out of 5..100: %s", what, estimates(st))
			}
		}
		if int(m1) != w1 || int(m2) != w2 {
			t.Errorf("%s: metrics weights %v/%v, status %d/%d", what, m1, m2, w1, w2)
		}
		return w1, w2
	}
	waitUntil(t, 60*time.Second, "isp2's weight well below isp1's", func() (bool, string) {
		w1, w2, st := weightsOf(t, d)
		return w1 == 100 && w2 <= 50, estimates(st)
	})
	_, learnt := check("learnt")
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "isp2 down", func() (bool, string) {
		st := statusOf(t, d)
		return st.Uplinks[1].State == "down", st.Uplinks[1].State
	})
	// Two windows (3 s each) with isp2 down and all the load on isp1.
	d.waitFor("uplink down", 1, 5*time.Second)
	n := strings.Count(d.log(), "\n")
	waitUntil(t, 20*time.Second, "two more seconds' log lines", func() (bool, string) {
		_, _, st := weightsOf(t, d)
		return strings.Count(d.log(), "\n") > n && st.Uplinks[1].Evidence != "", estimates(st)
	})
	check("isp2 down")
	if err := l.SetCarrier(2, true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "isp2 up again", func() (bool, string) {
		st := statusOf(t, d)
		return st.Uplinks[1].State == "up", st.Uplinks[1].State
	})
	_, back := check("isp2 back")
	t.Logf("isp2's weight learnt %d, after its return %d", learnt, back)
	if back > max(learnt*2, learnt+20) {
		t.Errorf("isp2's learnt weight %d lost on its return: %d", learnt, back)
	}
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: %d %s", code, out)
	}
	_, reloaded := check("after a reload")
	t.Logf("after the reload: %d", reloaded)
	if reloaded > max(back*2, back+20) {
		t.Errorf("isp2's weight %d lost in a reload: %d", back, reloaded)
	}
}

// TestMPTCPEdgeHealthDown: uplink 1's ISP stops forwarding (carrier
// stays) during an MPTCP download: its health checks take it down, its
// endpoint goes, the download goes on over uplink 2, and when the ISP
// is back the endpoint returns and the download takes uplink 1 again.
func TestMPTCPEdgeHealthDown(t *testing.T) {
	l := newLab(t, 2)
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "20mbit", "burst", "32kb", "latency", "20ms")
	}
	serveZeros(t, l)
	d := startWanpin(t, l, `mptcp = true

[[uplink]]
name = "isp1"
interface = "wan1"

[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]

[[uplink]]
name = "isp2"
interface = "wan2"

[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]
`)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	dl := startDownload(t, l, l.Router, netlab.ServerAddr4, true)
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the MPTCP download")
	carries(t, l, "wan2", 1<<20, "uplink 2 carrying the MPTCP download")
	if err := l.Blackhole(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`msg="uplink down" uplink=isp1`, 1, 10*time.Second)
	waitUntil(t, 5*time.Second, "uplink 1's endpoint removed", func() (bool, string) {
		out := endpoints(t, l)
		return !strings.Contains(out, netlab.UplinkAddr4(1)+" "), out
	})
	dl.More(t, 2<<20, 30*time.Second, "the download with uplink 1 down")
	if err := l.Blackhole(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`msg="uplink up" uplink=isp1`, 2, 15*time.Second)
	waitUntil(t, 5*time.Second, "uplink 1's endpoint back", func() (bool, string) {
		out := endpoints(t, l)
		return strings.Contains(out, netlab.UplinkAddr4(1)+" "), out
	})
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the download again")
	dl.More(t, 1<<20, 30*time.Second, "the download after uplink 1's return")
	dl.Abort()
}
