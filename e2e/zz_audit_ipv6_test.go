package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestAuditPTBFromRouter, per nat6 mode: the router's LAN link has a
// smaller MTU than the LAN host's, so the server's full-size segments of
// a stream to the LAN host cannot be forwarded and the router itself
// sends the server an ICMPv6 Packet Too Big. It must leave through the
// uplink the connection is pinned to with a source that ISP accepts, or
// the server never learns the path MTU and the stream stalls.
func TestAuditPTBFromRouter(t *testing.T) {
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

// TestAuditIPv4OnlyUplink: isp2 has no IPv6 at all next to a dual-stack
// isp1. Every IPv6 connection, forwarded or the router's own, and one a
// policy sends to isp2 (fallback any), must leave through isp1.
func TestAuditIPv4OnlyUplink(t *testing.T) {
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

// TestAuditIPv6Renumbered: isp1's IPv6 address changes (the ISP
// renumbers: a new address, the old one deprecated, then gone). New
// connections and a masqueraded UDP flow must use the new address; the
// entries NATed to the old one are flushed once it is gone.
func TestAuditIPv6Renumbered(t *testing.T) {
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

// TestAuditInboundToLANHost6: with nat6 prefix and none, a connection
// from the internet to the LAN host's address of the backup uplink
// (isp2, tier 2) gets its replies through isp2 with that address, and so
// does a ping.
func TestAuditInboundToLANHost6(t *testing.T) {
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

// TestAuditSticky6, per sticky_by: IPv6 sources stick to one uplink, the
// memory shows in status and explain, and it survives a reload and a
// restart.
func TestAuditSticky6(t *testing.T) {
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

// TestAuditOnLinkOfUplink: the LAN reaches the ISP's own address on an
// uplink's link (isp1's router, 2001:db8:101::1 and 198.51.100.1), whose
// connected route in the main table the suppress rule sends every packet
// to, whatever uplink the balancer chose. Every new connection must get
// through, by isp1; before, the ones balanced to isp2 left wan1 marked
// for isp2 and were dropped (half of them).
func TestAuditOnLinkOfUplink(t *testing.T) {
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
