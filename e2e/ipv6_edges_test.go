package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestIPv6EdgePTBFromRouter, per nat6 mode: the router's LAN link has a
// smaller MTU than the LAN host's, so the server's full-size segments of
// a stream to the LAN host cannot be forwarded and the router itself
// sends the server an ICMPv6 Packet Too Big. It must leave through the
// uplink the connection is pinned to with a source that ISP accepts, or
// the server never learns the path MTU and the stream stalls.
func TestIPv6EdgePTBFromRouter(t *testing.T) {
	for _, mode := range []string{"masquerade", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 2)
			if mode == "none" {
				if err := l.AddLANPrefixes(); err != nil {
					t.Fatal(err)
				}
			}
			d := startWanpin(t, l, dualConfig(mode, 1, 1)+`
[[policy]]
name = "to2"
sources = ["2001:db8:1::20/128"]
uplinks = ["isp2"]
`)
			_ = d
			run(t, l, l.LAN, "ip", "-6", "addr", "add", "2001:db8:1::20/64", "dev", "eth0", "nodad")
			run(t, l, l.Router, "ip", "link", "set", "lan0", "mtu", "1280")
			srcs := []string{netlab.LANHost6, "2001:db8:1::20"}
			if mode == "none" {
				srcs = []string{netlab.LANHostIn6(1), netlab.LANHostIn6(2)}
			}
			for _, src := range srcs {
				s, err := l.OpenStreamFrom(src, netlab.ServerAddr6)
				if err != nil {
					t.Fatal(err)
				}
				if why := stillFlowing(s); why != "" {
					t.Errorf("stream from %s (seen as %s) %s", src, s.Peer(), why)
				}
				s.Close()
			}
			t.Logf("router: %s", run(t, l, l.Router, "nstat", "-az", "Icmp6OutPktTooBigs", "Ip6OutNoRoutes"))
			t.Logf("server: %s", run(t, l, l.Server, "ip", "-6", "route", "show", "cache"))
			t.Logf("conntrack: %s", run(t, l, l.Router, "conntrack", "-L", "-f", "ipv6"))
			assertNoSpoofed(t, l)
		})
	}
}

// TestIPv6EdgeIPv4OnlyUplink: isp2 has no IPv6 at all next to a dual-stack
// isp1. Every IPv6 connection, forwarded or the router's own, and one a
// policy sends to isp2 (fallback any), must leave through isp1.
func TestIPv6EdgeIPv4OnlyUplink(t *testing.T) {
	l := newLab(t, 2)
	run(t, l, l.Router, "ip", "-6", "route", "del", "default", "dev", "wan2")
	run(t, l, l.Router, "ip", "-6", "addr", "del", netlab.UplinkAddr6(2)+"/64", "dev", "wan2")
	d := startWanpin(t, l, dualConfig("masquerade", 1, 1)+`
[[policy]]
name = "to2"
destinations = ["2001:db8:ff::11/128", "203.0.113.11/32"]
uplinks = ["isp2"]

[[policy]]
name = "only2"
protocol = "tcp"
ports = ["8082"]
uplinks = ["isp2"]
fallback = "none"
`)
	u := statusOf(t, d).Uplinks[1]
	t.Logf("isp2: %+v", u)
	l.ResetSeen()
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 20); err != nil || c[1] != 20 {
		t.Errorf("LAN IPv6: %v %v", c, err)
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAlt6, 10); err != nil || c[1] != 10 {
		t.Errorf("LAN IPv6 by policy to IPv4-only isp2: %v %v", c, err)
	}
	if c, err := l.CurlManySrc(netlab.LANHost4, netlab.ServerAlt4, 10); err != nil || c[2] != 10 {
		t.Errorf("LAN IPv4 by policy to isp2: %v %v", c, err)
	}
	// fallback none: IPv6 refused at once, IPv4 through isp2.
	if s4, err := l.OpenStreamFrom(netlab.LANHost4, netlab.ServerAddr4); err != nil || l.ISPOf(s4.Peer()) != 2 {
		t.Errorf("IPv4 stream by the fallback-none policy: %v", err)
	} else {
		s4.Close()
	}
	t0 := time.Now()
	if s6, err := l.OpenStreamFrom(netlab.LANHost6, netlab.ServerAddr6); err == nil {
		t.Errorf("IPv6 stream by the fallback-none policy to IPv4-only isp2 opened, seen as %s", s6.Peer())
		s6.Close()
	} else {
		t.Logf("IPv6 stream refused after %v: %v", time.Since(t0), err)
	}
	out, err := l.Exec(l.Router, "curl", "-sS", "--connect-timeout", "3", "http://["+netlab.ServerAddr6+"]:8082/")
	t.Logf("router's own IPv6 to 8082 (policy only2): %v %q", err, out)
	got := routerCurls(t, l, true, 10)
	if got[1] != 10 {
		t.Errorf("router's own IPv6: %v", got)
	}
	for _, args := range [][]string{
		{"--src", netlab.LANHost6, "--dst", netlab.ServerAlt6, "--iif", "lan0"},
		{"--src", netlab.LANHost6, "--dst", netlab.ServerAddr6, "--iif", "lan0"},
		{"--uid", "0", "--dst", netlab.ServerAddr6},
		{"--uid", "0", "--dst", netlab.ServerAlt6},
		{"--uid", "0", "--dst", netlab.UplinkGlobal6(1)},
		{"--uid", "0", "--dst", netlab.LANHost6},
	} {
		out := run(t, l, l.Router, append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin, "explain", "--proto", "tcp", "--dport", "8080"}, args...)...)
		t.Logf("explain %v:\n%s", args, out)
	}
	assertNoSpoofed(t, l)
	_ = strings.Contains
	_ = fmt.Sprint
	_ = time.Second
}

// tiered is isp1 in tier 1 and isp2 in tier 2, one nat6 mode.
func tiered(mode string) string {
	return strings.Replace(dualConfig(mode, 1, 1), "name = \"isp2\"\n", "name = \"isp2\"\ntier = 2\n", 1)
}

// TestIPv6EdgeRenumbered: isp1's IPv6 address changes (the ISP
// renumbers: a new address, the old one deprecated, then gone). New
// connections and a masqueraded UDP flow must use the new address; the
// entries NATed to the old one are flushed once it is gone.
func TestIPv6EdgeRenumbered(t *testing.T) {
	l := newLab(t, 2)
	const newAddr = "2001:db8:101::3"
	run(t, l, l.ISP(1), "nft", "insert", "rule", "inet", "isp", "in", "ip6", "saddr", newAddr, "accept")
	d := startWanpin(t, l, tiered("masquerade"))
	started := time.Now()
	f, err := l.StartUDPFlowFrom(netlab.LANHost6, 40011, netlab.ServerAddr6, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if a := waitAnswers(t, f, 1, started, "the flow"); a[len(a)-1].Seen != netlab.UplinkAddr6(1) {
		t.Fatalf("flow before: %v", a[len(a)-1])
	}
	// The new address comes, the old one is deprecated.
	run(t, l, l.Router, "ip", "-6", "addr", "add", newAddr+"/64", "dev", "wan1", "nodad")
	run(t, l, l.Router, "ip", "-6", "addr", "change", netlab.UplinkAddr6(1)+"/64", "dev", "wan1", "preferred_lft", "0")
	waitUntil(t, 5*time.Second, "isp1's IPv6 NAT address to be the new one", func() (bool, string) {
		out := run(t, l, l.Router, "nft", "list", "chain", "inet", "wanpin", "nat")
		return strings.Contains(out, "snat ip6 to "+newAddr), out
	})
	l.ResetSeen()
	// ISPOf knows only the lab's own address: the new one counts as 0.
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 10); err != nil || c[0] != 10 || l.Seen()[newAddr] < 10 {
		t.Errorf("new connections: %v %v, seen %v", c, err, l.Seen())
	}
	// The old one goes.
	gone := time.Now()
	run(t, l, l.Router, "ip", "-6", "addr", "del", netlab.UplinkAddr6(1)+"/64", "dev", "wan1")
	waitUntil(t, 5*time.Second, "the flow to come back through the new address", func() (bool, string) {
		a := f.Answers()
		if len(a) == 0 {
			return false, "no answers"
		}
		last := a[len(a)-1]
		return last.At.After(gone) && last.Seen == newAddr, fmt.Sprintf("%+v", last)
	})
	t.Logf("log:\n%s", d.log())
	assertNoSpoofed(t, l)
}

// TestIPv6EdgeInboundToLANHost6: with nat6 prefix and none, a connection
// from the internet to the LAN host's address of the backup uplink
// (isp2, tier 2) gets its replies through isp2 with that address, and so
// does a ping.
func TestIPv6EdgeInboundToLANHost6(t *testing.T) {
	for _, mode := range []string{"prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 2)
			if mode == "none" {
				if err := l.AddLANPrefixes(); err != nil {
					t.Fatal(err)
				}
			}
			startWanpin(t, l, tiered(mode))
			p, err := l.Start(l.LAN, t.TempDir()+"/socat.log", "socat", "TCP6-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo pong")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			waitUntil(t, 5*time.Second, "socat on the LAN host", func() (bool, string) {
				out, err := l.Exec(l.LAN, "ss", "-Hltn", "sport = :9000")
				return err == nil && strings.Contains(out, ":9000"), out
			})
			for i := 1; i <= 2; i++ {
				addr := netlab.NPTHost6(i)
				if mode == "none" {
					addr = netlab.LANHostIn6(i)
				}
				for k := 0; k < 3; k++ {
					out, err := l.Exec(l.Server, "socat", "-T", "3", "-", "TCP6:["+addr+"]:9000,connect-timeout=3")
					if err != nil || strings.TrimSpace(out) != "pong" {
						t.Errorf("server to %s: %v %q", addr, err, out)
					}
				}
				if out, err := l.Exec(l.Server, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", addr); err != nil {
					t.Errorf("ping %s: %v\n%s", addr, err, out)
				}
			}
			t.Logf("conntrack: %s", run(t, l, l.Router, "conntrack", "-L", "-f", "ipv6"))
			assertNoSpoofed(t, l)
		})
	}
}

// onOne6 is onOne over IPv6 to dst.
func onOne6(t *testing.T, l *netlab.Lab, src, dst string, n int, what string) int {
	t.Helper()
	counts, err := l.CurlManySrc(src, dst, n)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(counts) != 1 {
		t.Fatalf("%s: %d connections from %s spread over ISPs %v, want them all on one", what, n, src, counts)
	}
	for isp := range counts {
		return isp
	}
	return 0
}

// TestIPv6EdgeSticky6, per sticky_by: IPv6 sources stick to one uplink, the
// memory shows in status and explain, and it survives a reload and a
// restart.
func TestIPv6EdgeSticky6(t *testing.T) {
	for _, by := range []string{"source", "source+destination"} {
		t.Run(by, func(t *testing.T) {
			l := newLab(t, 2)
			run(t, l, l.LAN, "ip", "-6", "addr", "add", "2001:db8:1::20/64", "dev", "eth0", "nodad")
			cfg := fmt.Sprintf("sticky_by = %q\n", by) + stickyConfig("1m", "")
			d := startWanpin(t, l, cfg)
			srcs := []string{netlab.LANHost6, "2001:db8:1::20", "2001:db8:1::10"}
			got := map[string]int{}
			for _, s := range srcs[:2] {
				got[s] = onOne6(t, l, s, netlab.ServerAddr6, 30, "source "+s)
			}
			st := statusOf(t, d)
			t.Logf("sticky: %d %+v", st.StickyTotal, st.Sticky)
			if st.StickyTotal != 2 {
				t.Errorf("status: %d sticky entries, want 2: %+v", st.StickyTotal, st.Sticky)
			}
			for _, e := range st.Sticky {
				if want := fmt.Sprintf("isp%d", got[e.Source.String()]); e.Uplink != want {
					t.Errorf("status: %+v, want %s", e, want)
				}
			}
			out := run(t, l, l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "explain", "--src", netlab.LANHost6, "--dst", netlab.ServerAddr6, "--iif", "lan0", "--dport", "8080")
			if !strings.Contains(out, fmt.Sprintf("last new connection took isp%d", got[netlab.LANHost6])) {
				t.Errorf("explain:\n%s", out)
			}
			d.writeConfig(cfg + "\n[[policy]]\nname = \"discard\"\nports = [9]\n")
			if out, code := d.cli(0, "reload"); code != 0 {
				t.Fatalf("reload: %s", out)
			}
			d.waitFor("nftables applied", 2, 5*time.Second)
			for _, s := range srcs[:2] {
				if g := onOne6(t, l, s, netlab.ServerAddr6, 20, "after reload "+s); g != got[s] {
					t.Errorf("%s on ISP %d after a reload, was %d", s, g, got[s])
				}
			}
			d.stop(syscall.SIGTERM)
			d.start()
			for _, s := range srcs[:2] {
				if g := onOne6(t, l, s, netlab.ServerAddr6, 20, "after restart "+s); g != got[s] {
					t.Errorf("%s on ISP %d after a restart, was %d", s, g, got[s])
				}
			}
		})
	}
}

// TestOnLinkOfUplink: the LAN reaches the ISP's own address on an
// uplink's link (isp1's router, 2001:db8:101::1 and 198.51.100.1), whose
// connected route in the main table the suppress rule sends every packet
// to, whatever uplink the balancer chose. Every new connection must get
// through, by isp1; before, the ones balanced to isp2 left wan1 marked
// for isp2 and were dropped (half of them).
func TestOnLinkOfUplink(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, dualConfig("masquerade", 1, 1))
	// explain says the isp2 choice leaves by isp1.
	out := run(t, l, l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "explain",
		"--src", netlab.LANHost6, "--iif", "lan0", "--dst", netlab.UplinkGlobal6(1), "--dport", "80")
	if !strings.Contains(out, "by isp1: the main table's route to it comes first") {
		t.Errorf("explain does not say the isp2 choice leaves by isp1:\n%s", out)
	}
	for _, dst := range []string{netlab.UplinkGlobal6(1), netlab.UplinkGateway4(1)} {
		lost := 0
		for i := 0; i < 16; i++ {
			// A new ICMP echo id each time: a new connection, balanced.
			if _, err := l.Exec(l.LAN, "ping", "-c", "1", "-W", "1", dst); err != nil {
				lost++
			}
		}
		if lost > 0 {
			t.Errorf("pings to isp1's on-link router address %s: %d of 16 lost", dst, lost)
		}
	}
	// Pinned to where they really left: isp1's mark.
	out = run(t, l, l.Router, "conntrack", "-L", "-f", "ipv6", "-p", "icmpv6", "-d", netlab.UplinkGlobal6(1))
	if n, pinned := strings.Count(out, "src="), strings.Count(out, "mark=16777216 "); n == 0 || pinned != n/2 {
		t.Errorf("conntrack entries to %s: want every one pinned to isp1 (mark 0x1000000):\n%s", netlab.UplinkGlobal6(1), out)
	}
	assertNoSpoofed(t, l)
}

// TestIPv6EdgeLinkLocalTarget: the ISP's link-local router (fe80::1, the
// gateway router advertisements name) as an IPv6 health target, next to
// an IPv4 one, per method that takes it. The probes answer through each
// uplink's own interface; when ISP 1's IPv6 goes silent only its IPv6
// goes down.
func TestIPv6EdgeLinkLocalTarget(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, healthConfig("203.0.113.10", "fe80::1"))
	waitUntil(t, 5*time.Second, "answered probe rounds in each family on both uplinks", func() (bool, string) {
		st := statusOf(t, d)
		ok := true
		for _, u := range st.Uplinks {
			ok = ok && u.IPv4.RTTms > 0 && u.IPv6.RTTms > 0 && u.IPv6.State == "up"
		}
		return ok, fmt.Sprintf("%+v / %+v", st.Uplinks[0].IPv6, st.Uplinks[1].IPv6)
	})
	if err := l.Blackhole6(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink IPv6 down" uplink=isp1`, 1, 5*time.Second)
	if strings.Contains(d.log(), `uplink IPv6 down" uplink=isp2`) || strings.Contains(d.log(), `uplink IPv4 down`) {
		t.Errorf("more went down than isp1's IPv6:\n%s", d.log())
	}
	if err := l.Blackhole6(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink IPv6 up" uplink=isp1`, 1, 8*time.Second)
}

// TestIPv6EdgePTBFromISP, per nat6 mode: ISP 1's link to the server has an
// MTU of 1280; a LAN host's 1400-byte ping through isp1 gets ISP 1's
// Packet Too Big, sent to the translated address, and the router must
// hand it to the LAN host (translated back), who then knows the path MTU.
func TestIPv6EdgePTBFromISP(t *testing.T) {
	for _, mode := range []string{"masquerade", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l, src := nat6Lab(t, mode)
			startWanpin(t, l, tiered(mode))
			run(t, l, l.ISP(1), "ip", "link", "set", "srv", "mtu", "1280")
			out, _ := l.Exec(l.LAN, "ping", "-6", "-c", "3", "-i", "0.3", "-W", "1", "-s", "1400", "-M", "do", "-I", src, netlab.ServerAddr6)
			t.Logf("ping: %s", out)
			route := run(t, l, l.LAN, "ip", "-6", "route", "get", netlab.ServerAddr6, "from", src)
			if !strings.Contains(route, "mtu 1280") {
				t.Errorf("the LAN host did not learn the path MTU (no Packet Too Big through the router): %s", route)
			}
		})
	}
}

// TestIPv6EdgeFailback6, per nat6 mode: failback = "move" for IPv6. A stream
// and a UDP flow from the LAN host on the tier-2 backup while the primary
// is out; when it comes back the stream is reset at once and the flow's
// next datagrams leave by the primary, with the primary's address.
func TestIPv6EdgeFailback6(t *testing.T) {
	for _, mode := range []string{"masquerade", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			l, src := nat6Lab(t, mode)
			d := startWanpin(t, l, strings.Replace(tiered(mode), "tier = 2\n", "tier = 2\nfailback = \"move\"\n", 1))
			if err := l.SetCarrier(1, false); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink down" uplink=isp1`, 1, 5*time.Second)
			s, err := l.OpenStreamFrom(src, netlab.ServerAddr6)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if isp := l.ISPOf(s.Peer()); isp != 2 {
				t.Fatalf("the stream left by ISP %d (%s) while isp1 is out, want 2", isp, s.Peer())
			}
			f, err := l.StartUDPFlowFrom(src, 41006, netlab.ServerAddr6, 20*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			a := waitAnswers(t, f, 3, time.Now(), "the UDP flow on the backup")
			if isp := l.ISPOf(a[len(a)-1].Seen); isp != 2 {
				t.Fatalf("the UDP flow left by ISP %d, want 2", isp)
			}
			if err := l.SetCarrier(1, true); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink up" uplink=isp1`, 2, 5*time.Second)
			back := time.Now()
			d.waitFor(`msg="failback: connections moved" uplink=isp2 to=isp1 family=IPv6 `, 1, 2*time.Second)
			waitUntil(t, 2*time.Second, "the stream reset", func() (bool, string) {
				return s.Err() != nil, fmt.Sprintf("%d bytes", s.Received())
			})
			want := sourceAt(mode, 1)
			if mode == "none" {
				want = src
			}
			waitUntil(t, 2*time.Second, "the UDP flow on isp1", func() (bool, string) {
				a := f.Answers()
				last := a[len(a)-1]
				return last.At.After(back) && last.Seen == want, last.Seen
			})
			assertNoSpoofed(t, l)
		})
	}
}

// TestIPv6EdgeIPv4OnlyUplinkProbes: isp2 has no IPv6 but its health table
// names an IPv6 target too (one file for both uplinks). Its IPv6 probes
// cannot be sent; its IPv4, judged by its own target, stays up and keeps
// carrying IPv4, and a blackhole of ISP 2 still takes it down.
func TestIPv6EdgeIPv4OnlyUplinkProbes(t *testing.T) {
	l := newLab(t, 2)
	run(t, l, l.Router, "ip", "-6", "route", "del", "default", "dev", "wan2")
	run(t, l, l.Router, "ip", "-6", "addr", "del", netlab.UplinkAddr6(2)+"/64", "dev", "wan2")
	d := startWanpin(t, l, strings.Replace(healthConfig("203.0.113.10", "2001:db8:ff::10"), "tier = 2\n", "", 1))
	waitUntil(t, 5*time.Second, "answered IPv4 probes on isp2", func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.RTTms > 0, fmt.Sprintf("%+v", u)
	})
	// Enough rounds that every IPv6 probe of isp2 has been lost: still
	// nothing of isp2 goes down.
	waitUntil(t, 8*time.Second, "isp2's IPv6 probes all lost over the window", func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv6.Loss >= 1, fmt.Sprintf("%+v", u.IPv6)
	})
	if strings.Contains(d.log(), `"uplink down" uplink=isp2`) || strings.Contains(d.log(), `uplink IPv4 down" uplink=isp2`) {
		t.Errorf("isp2 went down without IPv6:\n%s", d.log())
	}
	if c, err := l.CurlMany(40); err != nil || c[2] == 0 {
		t.Errorf("IPv4 balancing with isp2: %v %v", c, err)
	}
	if err := l.Blackhole(2, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`"uplink down" uplink=isp2`, 1, 5*time.Second)
	t.Logf("status: %+v", statusOf(t, d).Uplinks[1])
}

// TestIPv6EdgeResolver6FamilyDown: ISP 1's IPv6 goes silent while its IPv4
// works. The router's queries to isp1's IPv6 resolver fail at once (its
// rule is unreachable, not leaked through isp2), those to its IPv4
// resolver still get answers through isp1.
func TestIPv6EdgeResolver6FamilyDown(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 2, Resolvers: true})
	d := startWanpin(t, l, resolverUplinks())
	waitUntil(t, 5*time.Second, "answered probe rounds of isp1 in each family", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.IPv4.RTTms > 0 && u.IPv6.RTTms > 0, fmt.Sprintf("%+v %+v", u.IPv4, u.IPv6)
	})
	if err := l.Blackhole6(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink IPv6 down" uplink=isp1`, 1, 5*time.Second)
	t0 := time.Now()
	out, err := l.Dig(l.Router, netlab.ResolverAddr6(1), netlab.NameWWW, "+time=2", "+tries=1")
	if err == nil || time.Since(t0) > time.Second {
		t.Errorf("query to isp1's IPv6 resolver with its IPv6 down: %v after %v\n%s", err, time.Since(t0), out)
	}
	if out, err := l.Dig(l.Router, netlab.ResolverAddr4(1), netlab.NameWWW, "+time=2", "+tries=1"); err != nil {
		t.Errorf("query to isp1's IPv4 resolver with its IPv6 down: %v\n%s", err, out)
	}
	if out, err := l.Dig(l.Router, netlab.ResolverAddr6(2), netlab.NameWWW, "+time=2", "+tries=1"); err != nil {
		t.Errorf("query to isp2's IPv6 resolver: %v\n%s", err, out)
	}
	for i := 1; i <= 2; i++ {
		if n, err := l.ResolverDrops(i); err != nil || n != 0 {
			t.Errorf("resolver %d dropped %d foreign queries (%v)", i, n, err)
		}
	}
}

// TestIPv4GoneIPv4Targets: both uplinks are probed by an IPv4
// target only (IPv6 follows IPv4's verdict). isp1 loses its IPv4 address
// (a DHCP lease gone) while its IPv6 works: its IPv6 must carry on (the
// README: "an ISP whose DHCP lease runs out while its IPv6 keeps working
// carries IPv6 on"), and an IPv6 stream through it must go on.
func TestIPv4GoneIPv4Targets(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, healthConfig("203.0.113.10"))
	waitUntil(t, 5*time.Second, "answered probe rounds of isp1", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.IPv4.RTTms > 0, fmt.Sprintf("%+v", u.IPv4)
	})
	s6, err := l.OpenStreamFrom(netlab.LANHost6, netlab.ServerAddr6)
	if err != nil {
		t.Fatal(err)
	}
	defer s6.Close()
	if l.ISPOf(s6.Peer()) != 1 {
		t.Fatalf("IPv6 stream via %s, want isp1", s6.Peer())
	}
	run(t, l, l.Router, "ip", "addr", "del", netlab.UplinkAddr4(1)+"/29", "dev", "wan1")
	gone := time.Now()
	d.waitFor(`uplink IPv4 down" uplink=isp1`, 1, 5*time.Second)
	// Rounds enough for any health verdict to land (down_after 2 at
	// 500 ms, then up_after 3 and the hold-down): the stream must flow
	// throughout.
	for time.Since(gone) < 4*time.Second {
		if why := stillFlowing(s6); why != "" {
			t.Fatalf("IPv6 stream on isp1 %s after isp1's IPv4 address went:\n%s", why, d.log())
		}
	}
	u := statusOf(t, d).Uplinks[0]
	if u.IPv6.State != "up" {
		t.Errorf("isp1's IPv6 with its IPv4 address gone: %+v\n%s", u.IPv6, d.log())
	}
	if c, err := l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 10); err != nil || c[1] != 10 {
		t.Errorf("new IPv6 connections: %v %v, want all through isp1 (tier 1)", c, err)
	}
	// The lease comes back: IPv4 is up again at once (its probes start
	// afresh), and IPv6 never went down.
	run(t, l, l.Router, "ip", "addr", "add", netlab.UplinkAddr4(1)+"/29", "dev", "wan1")
	run(t, l, l.Router, "ip", "route", "replace", "default", "via", netlab.UplinkGateway4(1), "dev", "wan1", "metric", "100")
	d.waitFor(`uplink IPv4 up" uplink=isp1`, 1, 5*time.Second)
	back := time.Now()
	for time.Since(back) < 3*time.Second {
		if why := stillFlowing(s6); why != "" {
			t.Fatalf("IPv6 stream on isp1 %s after isp1's IPv4 address came back", why)
		}
	}
	if c, err := l.CurlMany(10); err != nil || c[1] != 10 {
		t.Errorf("IPv4 after the lease came back: %v %v, want all through isp1 (tier 1)", c, err)
	}
	if strings.Contains(d.log(), `uplink IPv6 down" uplink=isp1`) || strings.Contains(d.log(), `"uplink down" uplink=isp1`) {
		t.Errorf("isp1's IPv6 went down with its IPv4 lease:\n%s", d.log())
	}
}

// TestIPv6EdgeExplainNat6None: explain for a LAN host of isp2's prefix6
// says the source prefix chooses isp2 and the kernel routes it there;
// with isp2 out, it is balanced over isp1 (and masqueraded there).
func TestIPv6EdgeExplainNat6None(t *testing.T) {
	l := newLab(t, 2)
	if err := l.AddLANPrefixes(); err != nil {
		t.Fatal(err)
	}
	d := startWanpin(t, l, dualConfig("none", 1, 1))
	args := []string{"--src", netlab.LANHostIn6(2), "--iif", "lan0", "--dst", netlab.ServerAddr6, "--dport", "8080"}
	e := explainAs(t, l, d, args...)
	if e.Explanation.Outcome != "balanced" || !strings.Contains(e.Explanation.Why, "prefix6") || len(e.Uplinks) != 1 ||
		e.Uplinks[0].Uplink != "isp2" || !strings.Contains(e.Uplinks[0].Kernel, "dev wan2") {
		t.Errorf("explain %v: %+v", args, e)
	}
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`"uplink down" uplink=isp2`, 1, 5*time.Second)
	e = explainAs(t, l, d, args...)
	if e.Explanation.Outcome != "balanced" || len(e.Uplinks) != 1 || e.Uplinks[0].Uplink != "isp1" || !strings.Contains(e.Uplinks[0].Kernel, "dev wan1") {
		t.Errorf("explain %v with isp2 out: %+v", args, e)
	}
	l.ResetSeen()
	if c, err := l.CurlManySrc(netlab.LANHostIn6(2), netlab.ServerAddr6, 10); err != nil || c[1] != 10 {
		t.Errorf("isp2's host with isp2 out: %v %v", c, err)
	}
	seenOnly(t, l, netlab.UplinkAddr6(1))
}

// TestIPv6EdgeNat6NoneBlackhole: nat6 none, ISP 1 silently drops everything
// (link up, routes kept for the probes). A UDP flow of a host of isp1's
// prefix moves to isp2, masqueraded; when ISP 1 is back, the host's new
// connections leave by isp1 untranslated again.
func TestIPv6EdgeNat6NoneBlackhole(t *testing.T) {
	l := newLab(t, 2)
	if err := l.AddLANPrefixes(); err != nil {
		t.Fatal(err)
	}
	cfg := dualConfig("none", 1, 1) + ""
	cfg = strings.ReplaceAll(cfg, "nat6 = \"none\"\n", "nat6 = \"none\"\n[uplink.health]\ntargets = [\"203.0.113.10\", \"2001:db8:ff::10\"]\n")
	// [uplink.health] must come after the uplink's own keys: prefix6
	// follows nat6 in dualConfig, so put it back above the table.
	for i := 1; i <= 2; i++ {
		p := fmt.Sprintf("prefix6 = %q\n", netlab.Delegated6(i))
		cfg = strings.Replace(cfg, p, "", 1)
		cfg = strings.Replace(cfg, fmt.Sprintf("name = \"isp%d\"\n", i), fmt.Sprintf("name = \"isp%d\"\n%s", i, p), 1)
	}
	d := startWanpin(t, l, cfg)
	src := netlab.LANHostIn6(1)
	started := time.Now()
	f, err := l.StartUDPFlowFrom(src, 40021, netlab.ServerAddr6, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if a := waitAnswers(t, f, 1, started, "the flow"); a[len(a)-1].Seen != src {
		t.Fatalf("flow before: %+v", a[len(a)-1])
	}
	if err := l.Blackhole(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`"uplink down" uplink=isp1`, 1, 5*time.Second)
	waitUntil(t, 3*time.Second, "the flow on isp2, masqueraded", func() (bool, string) {
		a := f.Answers()
		last := a[len(a)-1]
		return time.Since(last.At) < 200*time.Millisecond && last.Seen == netlab.UplinkAddr6(2), fmt.Sprintf("%+v", last)
	})
	if err := l.Blackhole(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`"uplink up" uplink=isp1`, 2, 8*time.Second)
	l.ResetSeen()
	if c, err := l.CurlManySrc(src, netlab.ServerAddr6, 10); err != nil || c[1] != 10 {
		t.Errorf("new connections after isp1's return: %v %v", c, err)
	}
	if l.Seen()[src] < 10 {
		t.Errorf("after the return the server saw %v, want %s untranslated", l.Seen(), src)
	}
	assertNoSpoofed(t, l)
}

// TestIPv6EdgeProbeMethods6: tcp, http and dns probes of IPv6 targets
// answer through each uplink, and a silent ISP 1 IPv6 takes only isp1's
// IPv6 down.
func TestIPv6EdgeProbeMethods6(t *testing.T) {
	for _, m := range []struct{ method, v4, v6 string }{
		{"tcp", "203.0.113.10:8080", "[2001:db8:ff::10]:8080"},
		{"http", "http://203.0.113.10:8080/", "http://[2001:db8:ff::10]:8080/"},
		{"dns", "", ""},
	} {
		t.Run(m.method, func(t *testing.T) {
			l := newLabWith(t, netlab.Options{ISPs: 2, Resolvers: true})
			var b strings.Builder
			for i := 1; i <= 2; i++ {
				v4, v6 := m.v4, m.v6
				if m.method == "dns" {
					v4, v6 = netlab.ResolverAddr4(i), netlab.ResolverAddr6(i)
				}
				fmt.Fprintf(&b, "\n[[uplink]]\nname = \"isp%d\"\ninterface = \"wan%d\"\n\n[uplink.health]\nmethod = %q\ntargets = [%q, %q]\n", i, i, m.method, v4, v6)
				if m.method == "dns" {
					b.WriteString("dns_name = \"" + netlab.NameWWW + "\"\n")
				}
			}
			d := startWanpin(t, l, b.String())
			waitUntil(t, 5*time.Second, "answered probes in each family on both uplinks", func() (bool, string) {
				st := statusOf(t, d)
				ok := true
				for _, u := range st.Uplinks {
					ok = ok && u.IPv4.RTTms > 0 && u.IPv6.RTTms > 0
				}
				return ok, fmt.Sprintf("%+v / %+v", st.Uplinks[0].IPv6, st.Uplinks[1].IPv6)
			})
			if err := l.Blackhole6(1, true); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`uplink IPv6 down" uplink=isp1`, 1, 5*time.Second)
			if strings.Contains(d.log(), `uplink IPv6 down" uplink=isp2`) || strings.Contains(d.log(), `uplink IPv4 down`) {
				t.Errorf("more went down than isp1's IPv6:\n%s", d.log())
			}
		})
	}
}
