package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/pkg/core"
)

// The IPv6 side of the lab: the LAN host is 2001:db8:1::10 (LANHost6);
// ISP i routes 2001:db8:d<i>::/56 to the router. nat6 = "none" gives the
// host an address in each ISP's prefix (AddLANPrefixes); "prefix" maps
// 2001:db8:1::/64 onto 2001:db8:d<i>:1::/64; "masquerade" uses the
// router's address on the uplink.

// dualConfig is two uplinks with weights w1:w2 in one nat6 mode.
func dualConfig(mode string, w1, w2 int) string {
	var b strings.Builder
	b.WriteString("lan_prefix6 = \"" + netlab.LANPrefix6 + "\"\n")
	for i, w := range []int{w1, w2} {
		n := i + 1
		fmt.Fprintf(&b, "\n[[uplink]]\nname = \"isp%d\"\ninterface = \"wan%d\"\nweight = %d\nnat6 = %q\n", n, n, w, mode)
		switch mode {
		case "none":
			fmt.Fprintf(&b, "prefix6 = %q\n", netlab.Delegated6(n))
		case "prefix":
			fmt.Fprintf(&b, "prefix6 = %q\n", netlab.NPT6(n))
		}
	}
	return b.String()
}

// sourceAt is the address the server must see for LANHost6's
// connections through ISP i in a nat6 mode.
func sourceAt(mode string, i int) string {
	if mode == "prefix" {
		return netlab.NPTHost6(i)
	}
	return netlab.UplinkAddr6(i)
}

// seenOnly reports whether the server saw exactly the addresses in want
// (each at least once) since the last ResetSeen.
func seenOnly(t *testing.T, l *netlab.Lab, want ...string) {
	t.Helper()
	seen := l.Seen()
	for _, w := range want {
		if seen[w] == 0 {
			t.Errorf("the server never saw %s; it saw %v", w, seen)
		}
		delete(seen, w)
	}
	if len(seen) > 0 {
		t.Errorf("the server also saw %v, want only %v", seen, want)
	}
}

// TestIPv6Balancing, per nat6 mode: weights 3:1 over IPv6, the server
// sees the addresses the mode promises and no ISP drops a packet.
func TestIPv6Balancing(t *testing.T) {
	for _, mode := range []string{"masquerade", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 2)
			if mode == "none" {
				if err := l.AddLANPrefixes(); err != nil {
					t.Fatal(err)
				}
			}
			startWanpin(t, l, dualConfig(mode, 3, 1))
			if mode == "none" {
				// The source prefix chooses: no balancing, no NAT.
				for i := 1; i <= 2; i++ {
					l.ResetSeen()
					counts, err := l.CurlManySrc(netlab.LANHostIn6(i), netlab.ServerAddr6, 50)
					if err != nil || counts[i] != 50 {
						t.Errorf("from %s: %v %v, want all 50 through ISP %d", netlab.LANHostIn6(i), counts, err, i)
					}
					seenOnly(t, l, netlab.LANHostIn6(i))
				}
			}
			// The LAN's own prefix (in none mode: an address in neither
			// ISP's prefix) is balanced and translated.
			l.ResetSeen()
			counts, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 400)
			if err != nil {
				t.Fatal(err)
			}
			if counts[1]+counts[2] != 400 {
				t.Fatalf("server saw %d of 400 connections (%v)", counts[1]+counts[2], counts)
			}
			share := float64(counts[1]) / 400
			if math.Abs(share-0.75) > 0.07 {
				t.Errorf("uplink 1 share %.1f%%, want 75%% ± 7 (counts %v)", share*100, counts)
			}
			t.Logf("nat6 %s: isp1 %d, isp2 %d", mode, counts[1], counts[2])
			seenOnly(t, l, sourceAt(mode, 1), sourceAt(mode, 2))
			// IPv4 still balances beside it.
			if c4, err := l.CurlMany(100); err != nil || c4[1] == 0 || c4[2] == 0 || c4[1]+c4[2] != 100 {
				t.Errorf("IPv4 next to IPv6: %v %v", c4, err)
			}
			assertNoSpoofed(t, l)
		})
	}
}

// nat6Lab is a two-ISP lab for one nat6 mode and the LAN host's source
// address in it: with "none" the host has an address of ISP 1's prefix.
func nat6Lab(t *testing.T, mode string) (*netlab.Lab, string) {
	t.Helper()
	l := newLab(t, 2)
	if mode != "none" {
		return l, netlab.LANHost6
	}
	if err := l.AddLANPrefixes(); err != nil {
		t.Fatal(err)
	}
	return l, netlab.LANHostIn6(1)
}

// TestIPv6Failover, per nat6 mode: uplink 1 loses carrier and every new
// IPv6 connection leaves through uplink 2, translated so ISP 2 accepts it
// (in none mode too: a host of ISP 1's prefix is masqueraded while ISP 1
// is gone). A stream opened meanwhile stays on uplink 2 without a stall
// when uplink 1 comes back, while new connections use uplink 1 again.
func TestIPv6Failover(t *testing.T) {
	for _, mode := range []string{"masquerade", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l, src := nat6Lab(t, mode)
			d := startWanpin(t, l, dualConfig(mode, 1, 1))
			if err := l.SetCarrier(1, false); err != nil {
				t.Fatal(err)
			}
			d.waitFor("uplink down", 1, 5*time.Second)
			l.ResetSeen()
			counts, err := l.CurlManySrc(src, netlab.ServerAddr6, 50)
			if err != nil || counts[2] != 50 {
				t.Errorf("with uplink 1 down: %v %v, want all 50 through ISP 2", counts, err)
			}
			want2 := sourceAt(mode, 2)
			seenOnly(t, l, want2)

			s, err := l.OpenStreamFrom(src, netlab.ServerAddr6)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Peer() != want2 {
				t.Fatalf("stream from %s, want %s", s.Peer(), want2)
			}
			counts = failbackWithoutStall(t, l, d, s, func() map[int]int {
				c, _ := l.CurlManySrc(src, netlab.ServerAddr6, 100)
				return c
			})
			if mode == "none" {
				// ISP 1's host goes back to ISP 1, untranslated.
				if counts[1] != 100 {
					t.Errorf("new connections after failback: %v, want all through ISP 1", counts)
				}
				if l.Seen()[netlab.LANHostIn6(1)] == 0 {
					t.Errorf("after failback the server never saw %s untranslated: %v", netlab.LANHostIn6(1), l.Seen())
				}
			} else if counts[1] < 20 || counts[2] < 20 {
				t.Errorf("new connections after failback: %v, want both uplinks used", counts)
			}
			if s.Err() != nil {
				t.Errorf("stream broke: %v", s.Err())
			}
			assertNoSpoofed(t, l)
		})
	}
}

func statusOf(t *testing.T, d *daemon) core.Status {
	t.Helper()
	out, code := d.cli(0, "status", "--json")
	var s core.Status
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil {
		t.Fatalf("status --json: %d %s", code, out)
	}
	return s
}

// TestIPv6BlackholeOneFamily: ISP 1's IPv6 goes silent while its IPv4
// keeps working. Probes of both families tell them apart: only uplink
// 1's IPv6 is taken out (status and log say so), an IPv6 UDP flow moves
// to ISP 2 while IPv4 keeps using both uplinks and an IPv4 stream pinned
// to ISP 1 is not flushed; when IPv6 comes back, uplink 1 takes IPv6
// again after the hold-down.
func TestIPv6BlackholeOneFamily(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, healthConfig("203.0.113.10", "2001:db8:ff::10"))
	started := time.Now()
	f, err := l.StartUDPFlow(40008, netlab.ServerAddr6, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s4, err := l.OpenStream(netlab.ServerAddr4)
	if err != nil {
		t.Fatal(err)
	}
	defer s4.Close()
	if a := waitAnswers(t, f, 1, started, "the IPv6 UDP flow before the failure"); a[len(a)-1].Seen != netlab.UplinkAddr6(1) {
		t.Fatalf("IPv6 flow before the failure: %v", a)
	}
	// ISP 1's IPv6 fails once uplink 1's probes of both families have
	// had answers.
	waitUntil(t, 5*time.Second, "an answered probe round of isp1 in each family", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.IPv4.RTTms > 0 && u.IPv6.RTTms > 0, fmt.Sprintf("IPv4 %+v, IPv6 %+v", u.IPv4, u.IPv6)
	})
	if l.ISPOf(s4.Peer()) != 1 {
		t.Fatalf("IPv4 stream through %s, want ISP 1", s4.Peer())
	}
	if err := l.Blackhole6(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink IPv6 down" uplink=isp1`, 1, 5*time.Second)
	if !regexp.MustCompile(`uplink IPv6 down" uplink=isp1 .*reason="health probes: 2 rounds lost: 2001:db8:ff::10 timeout"`).MatchString(d.log()) {
		t.Errorf("no readable IPv6 reason in the log:\n%s", d.log())
	}
	if strings.Contains(d.log(), `"uplink down" uplink=isp1`) || strings.Contains(d.log(), `uplink IPv4 down" uplink=isp1`) {
		t.Errorf("IPv4 of isp1 was taken down with its IPv6:\n%s", d.log())
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		a := f.Answers()
		if len(a) > 0 && a[len(a)-1].Seen == netlab.UplinkAddr6(2) && time.Since(a[len(a)-1].At) < 200*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the IPv6 UDP flow did not move to ISP 2")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 20); err != nil || c[2] != 20 {
		t.Errorf("new IPv6 connections during the IPv6 blackhole: %v %v", c, err)
	}
	if c, err := l.CurlMany(20); err != nil || c[1] != 20 {
		t.Errorf("new IPv4 connections during the IPv6 blackhole: %v %v, want all on isp1 (tier 1)", c, err)
	}
	if why := stillFlowing(s4); why != "" {
		t.Errorf("IPv4 stream on isp1 %s with isp1's IPv6", why)
	}
	st := statusOf(t, d)
	u := st.Uplinks[0]
	if u.State != "up" || u.IPv4.State != "up" || u.IPv6.State != "down" || !strings.Contains(u.IPv6.Reason, "health probes") {
		t.Errorf("status of isp1: %+v", u)
	}
	table, _ := d.cli(0, "status")
	t.Logf("status:\n%s", table)
	if !regexp.MustCompile(`(?m)^\s+v6\s+down .*health probes`).MatchString(table) {
		t.Errorf("status table does not show isp1's IPv6 down:\n%s", table)
	}

	back := time.Now()
	if err := l.Blackhole6(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink IPv6 up" uplink=isp1`, 1, 8*time.Second)
	t.Logf("isp1's IPv6 back after %v", time.Since(back).Round(time.Millisecond))
	if time.Since(back) < 2*time.Second {
		t.Errorf("IPv6 came back before the 2 s hold-down")
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 20); err != nil || c[1] != 20 {
		t.Errorf("new IPv6 connections after recovery: %v %v", c, err)
	}
	assertNoSpoofed(t, l)
}

// TestIPv4DownIPv6Up: uplink 1 loses its IPv4 address (a DHCP lease
// gone) but keeps IPv6: only its IPv4 leaves the balancing, only its IPv4
// conntrack entries are flushed, and an IPv6 stream through it goes on.
func TestIPv4DownIPv6Up(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
	s6, err := l.OpenStreamFrom(netlab.LANHost6, netlab.ServerAddr6)
	if err != nil {
		t.Fatal(err)
	}
	defer s6.Close()
	if s6.Peer() != netlab.UplinkAddr6(1) {
		t.Fatalf("IPv6 stream from %s, want ISP 1", s6.Peer())
	}
	run(t, l, l.Router, "ip", "addr", "del", netlab.UplinkAddr4(1)+"/29", "dev", "wan1")
	d.waitFor(`uplink IPv4 down" uplink=isp1`, 1, 5*time.Second)
	// The targeted flush: isp1's IPv4 entries, not its IPv6 ones.
	d.waitFor(`conntrack flushed" uplink=isp1 family=IPv4 `, 1, 2*time.Second)
	if c, err := l.CurlMany(20); err != nil || c[2] != 20 {
		t.Errorf("IPv4 with isp1's IPv4 gone: %v %v, want all through ISP 2", c, err)
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 20); err != nil || c[1] != 20 {
		t.Errorf("IPv6 with isp1's IPv4 gone: %v %v, want all through ISP 1", c, err)
	}
	if why := stillFlowing(s6); why != "" {
		t.Errorf("IPv6 stream on isp1 %s when its IPv4 went", why)
	}
	u := statusOf(t, d).Uplinks[0]
	if u.State != "up" || u.IPv4.State != "down" || u.IPv6.State != "up" || !strings.Contains(u.IPv4.Reason, "no IPv4 address") {
		t.Errorf("status of isp1: %+v", u)
	}
	assertNoSpoofed(t, l)
}

// TestNeighbourDiscoveryAndRA: with wanpin running, the router's own
// neighbour discovery works on every interface, and a router solicitation
// on an uplink is answered by the ISP's router advertisement, whose
// link-local default router wanpin then takes as the uplink's IPv6
// gateway. Link-local and multicast are never policy-routed.
func TestNeighbourDiscoveryAndRA(t *testing.T) {
	for _, tool := range []string{"ndisc6", "rdisc6", "radvd"} {
		if _, err := lookPath(tool); err != nil {
			t.Skipf("needs %s (Debian packages ndisc6, radvd)", tool)
		}
	}
	l := newLab(t, 2)
	d := startWanpin(t, l, dualConfig("masquerade", 1, 1))
	for _, c := range []struct{ iface, target string }{
		{"wan1", netlab.UplinkGlobal6(1)}, {"wan2", netlab.UplinkGlobal6(2)},
		{"wan1", "fe80::1"}, {"wan2", "fe80::1"}, {"lan0", netlab.LANHost6},
	} {
		out, err := l.Exec(l.Router, "ndisc6", "-1", "-r", "3", "-w", "500", c.target, c.iface)
		if err != nil || !strings.Contains(out, "Target link-layer address") {
			t.Errorf("neighbour solicitation for %s on %s: %v\n%s", c.target, c.iface, err, out)
		}
	}
	if out, err := l.Exec(l.Router, "ping", "-6", "-c", "1", "-W", "2", "fe80::1%wan2"); err != nil {
		t.Errorf("link-local ping to ISP 2's router: %v\n%s", err, out)
	}
	out := run(t, l, l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "explain", "--config", d.cfgPath, "--dst", "ff02::1:2", "--proto", "udp", "--dport", "547")
	if !strings.Contains(out, "never policy-routed") {
		t.Errorf("explain for DHCPv6 servers (ff02::1:2):\n%s", out)
	}

	// Take uplink 1's IPv6 default route away: IPv6 down on it.
	run(t, l, l.Router, "ip", "-6", "route", "del", "default", "via", "fe80::1", "dev", "wan1")
	d.waitFor(`uplink IPv6 down" uplink=isp1`, 1, 5*time.Second)
	// The ISP starts sending router advertisements; the router asks for
	// one at once, takes it, and wanpin brings uplink 1's IPv6 back
	// through the link-local router the advertisement named.
	dir := t.TempDir()
	for i := 1; i <= 2; i++ {
		if _, err := l.StartRA(i, dir); err != nil {
			t.Fatal(err)
		}
	}
	// Router solicitations leave and advertisements come back on both
	// uplinks, the one wanpin has taken down included.
	for _, wan := range []string{"wan1", "wan2"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, err := l.Exec(l.Router, "rdisc6", "-1", "-r", "2", "-w", "1000", wan)
			if err == nil && strings.Contains(out, "from fe80::") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no router advertisement on %s while wanpin runs: %v\n%s", wan, err, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	d.waitFor(`uplink IPv6 up" uplink=isp1`, 1, 10*time.Second)
	u := statusOf(t, d).Uplinks[0]
	if u.IPv6.State != "up" || !strings.HasPrefix(u.IPv6.Gateway, "fe80::") || !strings.Contains(u.IPv6.Reason, "from the main table") {
		t.Errorf("isp1's IPv6 after the RA: %+v", u.IPv6)
	}
	if out := run(t, l, l.Router, "ip", "-6", "route", "show", "default", "dev", "wan1"); !strings.Contains(out, "proto ra") {
		t.Errorf("no RA-learned default route on wan1:\n%s", out)
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 40); err != nil || c[1] == 0 || c[2] == 0 {
		t.Errorf("IPv6 balancing with isp1's RA-learned router: %v %v", c, err)
	}
	assertNoSpoofed(t, l)
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }
