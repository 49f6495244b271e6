package core

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

func TestExplainPolicies(t *testing.T) {
	a := netip.MustParseAddr
	cfg := testConfig()
	cfg.Policies = append(cfg.Policies,
		config.Policy{Name: "gid", Match: policy.Match{GIDs: []uint32{0}}, Uplinks: []string{"dsl2"}},
		config.Policy{Name: "uid", Match: policy.Match{UIDs: []uint32{1001}}, Uplinks: []string{"lte"}})
	nft := Build(Facts{Config: cfg, Uplinks: allUp()})
	cases := []struct {
		name   string
		f      policy.Flow
		policy string
		out    Outcome
	}{
		{"source policy", policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Proto: 6, DPort: 80}, "p2p", Balanced},
		{"voip by port", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5061}, "voip", Balanced},
		{"voip wrong protocol", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 5061}, "", Balanced},
		{"nothing", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443}, "", Balanced},
		{"source policy is for forwarded traffic only", policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Local: true, UID: 5, GID: 5}, "", MainTable},
		{"a service not running matches nothing", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 5, GID: 5}, "", MainTable},
		// Users and groups are matched apart: uid 1001 in group 1001 is
		// not group 0 (explain once reported any gid as 0).
		{"uid", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, GID: 1001}, "uid", Balanced},
		{"gid", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, GID: 0}, "gid", Balanced},
		{"users are for the router's own traffic", policy.Flow{Dst: a("203.0.113.10")}, "", Balanced},
		{"from the internet", policy.Flow{Dst: a("198.51.100.2"), InIface: "wan2"}, "", Inbound},
		{"a socket mark wins", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, Mark: 0x30000}, "", SocketMark},
		// wg-quick's 51820: outside wanpin's mask, another program's.
		{"another program's mark", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, Mark: 0xca6c}, "", ForeignMark},
	}
	for _, c := range cases {
		e := Explain(nft, c.f, nil)
		if e.Policy != c.policy || e.Outcome != c.out {
			t.Errorf("%s: policy %q %s, want %q %s (%+v)", c.name, e.Policy, e.Outcome, c.policy, c.out, e)
		}
	}
}

func TestExplainShares(t *testing.T) {
	cfg := testConfig()
	st := allUp()
	a := netip.MustParseAddr
	e := Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443}, nil)
	if e.Policy != "" || len(e.Choices) != 2 || e.Choices[0].Share != 0.75 || e.Choices[1].Uplink != "dsl2" {
		t.Errorf("default: %+v", e)
	}
	delete(st, "dsl1")
	e = Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5060}, nil)
	if e.Policy != "voip" || e.Outcome != Rejected || len(e.Choices) != 0 {
		t.Errorf("voip with dsl1 down: %+v", e)
	}
	st["dsl2"] = UplinkState{}
	e = Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10")}, nil)
	if e.Policy != "p2p" || !e.Fallback || len(e.Choices) != 1 || e.Choices[0].Uplink != "lte" {
		t.Errorf("p2p falling back to the backup tier: %+v", e)
	}
	// The router's own traffic that no policy takes follows the main
	// table: explain says so instead of claiming a balance.
	e = Explain(Build(Facts{Config: cfg, Uplinks: allUp()}), policy.Flow{Local: true, Dst: a("203.0.113.10"), Proto: 6}, nil)
	if e.Outcome != MainTable || len(e.Choices) != 0 {
		t.Errorf("router's own: %+v", e)
	}
}

// kernelTypes stands for the kernel's local table: the addresses it
// holds, and the types of their subnets' broadcasts.
func kernelTypes(types map[string]AddrType) (AddrTypes, *[]netip.Addr) {
	var asked []netip.Addr
	return func(a netip.Addr) AddrType {
		asked = append(asked, a)
		if t, ok := types[a.String()]; ok {
			return t
		}
		return AddrUnicast
	}, &asked
}

// TestExplainNotRouted: the chains' early returns follow the kernel's
// type of the destination (fib daddr type), whichever interface holds
// it, and the address's own prefix; a policy that would take the flow
// (uid 1001 -> lte, source 192.0.2.20 -> dsl2) never gets it.
func TestExplainNotRouted(t *testing.T) {
	a := netip.MustParseAddr
	cfg := testConfig()
	cfg.Policies = append(cfg.Policies, config.Policy{Name: "uid", Match: policy.Match{UIDs: []uint32{1001}}, Uplinks: []string{"lte"}})
	x := NewExplainer(Build(Facts{Config: cfg, Uplinks: allUp()}))
	types := map[string]AddrType{
		"192.0.2.1":      AddrLocal,     // the LAN's router address
		"192.0.2.65":     AddrLocal,     // a second LAN's, an interface no uplink is
		"198.51.100.2":   AddrLocal,     // an uplink's
		"192.0.2.63":     AddrBroadcast, // the LAN's subnet broadcast
		"2001:db8:1::1":  AddrLocal,
		"2001:db8:1::":   AddrAnycast, // subnet-router anycast: no chain returns on it
		"203.0.113.10":   AddrUnicast,
		"2001:db8:ff::1": AddrUnreachable,
	}
	fwd := func(dst string) policy.Flow {
		src := "192.0.2.20"
		if a(dst).Is6() {
			src = "2001:db8:1::20"
		}
		return policy.Flow{Src: a(src), InIface: "lan0", Dst: a(dst), Proto: 6, DPort: 22}
	}
	own := func(dst string) policy.Flow {
		return policy.Flow{Local: true, UID: 1001, GID: 1001, Dst: a(dst), Proto: 17, DPort: 9}
	}
	cases := []struct {
		name  string
		f     policy.Flow
		out   Outcome
		why   string
		asked bool // whether the kernel is asked
	}{
		{"LAN host to the router's LAN address", fwd("192.0.2.1"), NotRouted, "to the router itself", true},
		{"LAN host to a second LAN's router address", fwd("192.0.2.65"), NotRouted, "to the router itself", true},
		{"LAN host to an uplink's address", fwd("198.51.100.2"), NotRouted, "to the router itself", true},
		{"LAN host to the router's IPv6 address", fwd("2001:db8:1::1"), NotRouted, "to the router itself", true},
		{"LAN host to the subnet broadcast", fwd("192.0.2.63"), NotRouted, "broadcast: never policy-routed", true},
		{"LAN host to the limited broadcast", fwd("255.255.255.255"), NotRouted, "broadcast: never policy-routed", false},
		{"LAN host to mDNS", fwd("224.0.0.251"), NotRouted, "multicast: never policy-routed", false},
		{"LAN host to all nodes", fwd("ff02::1"), NotRouted, "multicast: never policy-routed", false},
		{"LAN host to a link-local address", fwd("fe80::1"), NotRouted, "link-local: never policy-routed", false},
		{"LAN host to the internet", fwd("203.0.113.10"), Balanced, "policy p2p", true},
		{"LAN host to the subnet-router anycast", fwd("2001:db8:1::"), MainTable, "no uplink is up", true}, // (allUp has no IPv6),
		{"LAN host to an IPv6 address with no route", fwd("2001:db8:ff::1"), MainTable, "no uplink is up", true},
		{"the router's user to its own address", own("192.0.2.1"), NotRouted, "to the router itself", true},
		{"the router's user to a second LAN's address", own("192.0.2.65"), NotRouted, "to the router itself", true},
		{"the router's user to the subnet broadcast", own("192.0.2.63"), NotRouted, "broadcast: never policy-routed", true},
		{"the router's user to its own IPv6 address", own("2001:db8:1::1"), NotRouted, "to the router itself", true},
		{"the router's user to the internet", own("203.0.113.10"), Balanced, "policy uid", true},
		{"from the internet: pinned before any return", policy.Flow{InIface: "wan2", Src: a("203.0.113.10"), Dst: a("198.51.100.10")}, Inbound, "came in on uplink dsl2", false},
		{"a socket's mark: before any return", policy.Flow{Local: true, Mark: 0x20000, Dst: a("192.0.2.63")}, SocketMark, "the socket's own mark", false},
	}
	for _, c := range cases {
		types, asked := kernelTypes(types)
		e := x.Explain(c.f, types)
		if e.Outcome != c.out || e.Why != c.why {
			t.Errorf("%s: %s %q, want %s %q (%+v)", c.name, e.Outcome, e.Why, c.out, c.why, e)
		}
		if c.out == NotRouted && (e.Policy != "" || len(e.Choices) != 0) {
			t.Errorf("%s: not routed with a policy or choices: %+v", c.name, e)
		}
		if want := []netip.Addr{c.f.Dst}; c.asked != (len(*asked) > 0) || c.asked && !slices.Equal(*asked, want) {
			t.Errorf("%s: the kernel was asked %v, want asked %v", c.name, *asked, c.asked)
		}
	}
	// Without the kernel's answer (nil) only the address speaks.
	if e := x.Explain(fwd("192.0.2.1"), nil); e.Outcome != Balanced {
		t.Errorf("no kernel types: %+v", e)
	}
	if e := x.Explain(fwd("255.255.255.255"), nil); e.Outcome != NotRouted {
		t.Errorf("no kernel types, limited broadcast: %+v", e)
	}
}

func TestExplainSticky(t *testing.T) {
	d := desired.State{NFT: desired.NFT{Mask: 0xff00,
		Uplinks: []desired.Uplink{{Name: "a", Interface: "eth1", Mark: 0x100}, {Name: "b", Interface: "eth2", Mark: 0x200}},
		Default: desired.Balancer{
			V4:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
			V6:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
			Sticky: desired.Sticky{Timeout: 10 * time.Minute},
		}}}
	x := NewExplainer(d)
	f := policy.Flow{Src: netip.MustParseAddr("192.0.2.7"), Dst: netip.MustParseAddr("198.51.100.1"), Proto: 6, DPort: 443}
	remembers := func(pol string, fam inet.Family, mark uint32, src, dst netip.Addr) (time.Duration, bool) {
		if pol == "" && fam == inet.IPv4 && mark == 0x200 && src == f.Src && !dst.IsValid() {
			return 61 * time.Second, true
		}
		return 0, false
	}
	e := x.ExplainSticky(f, nil, remembers)
	if e.Outcome != Balanced || e.Sticky == nil || e.Sticky.Uplink != "b" || e.Sticky.Left != 61 || len(e.Choices) != 1 || e.Choices[0].Uplink != "b" {
		t.Errorf("remembered source: %+v", e)
	}
	if !strings.Contains(e.Why, "sticky: this source's last new connection took b (remembered 1m1s more)") {
		t.Errorf("why: %s", e.Why)
	}
	other := f
	other.Src = netip.MustParseAddr("192.0.2.8")
	e = x.ExplainSticky(other, nil, remembers)
	if e.Sticky != nil || len(e.Choices) != 2 || !strings.Contains(e.Why, "sticky 10m0s: the uplink it gets is remembered for this source") {
		t.Errorf("a new source: %+v", e)
	}
}

// Another program's mark on the router's own packet: the table leaves it
// alone, but wanpin's router rule (no mark condition) routes it before
// any rule of that program with a later priority, and explain says so.
func TestExplainForeignMarkNamesRouterRule(t *testing.T) {
	cfg := testConfig()
	cfg.RouterTraffic = config.RouterBalance
	f := policy.Flow{Local: true, Dst: netip.MustParseAddr("203.0.113.10"), UID: 1001, Mark: 0x10}
	e := Explain(Build(Facts{Config: cfg, Uplinks: allUp()}), f, nil)
	if e.Outcome != ForeignMark || !strings.Contains(e.Why, "wanpin's rule 10700") {
		t.Errorf("router_traffic balance: %+v", e)
	}
	cfg.RouterTraffic = config.RouterMain
	if e := Explain(Build(Facts{Config: cfg, Uplinks: allUp()}), f, nil); e.Outcome != ForeignMark || strings.Contains(e.Why, "wanpin's rule") {
		t.Errorf("router_traffic main: %+v", e)
	}
}
