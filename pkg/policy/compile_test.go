package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// Each match key, evaluated on flows the way the kernel evaluates the
// compiled conditions.
func TestMatches(t *testing.T) {
	a := netip.MustParseAddr
	fwd := func(src, dst string, proto uint8, sport, dport uint16) Flow {
		return Flow{Src: a(src), Dst: a(dst), Proto: proto, SPort: sport, DPort: dport, InIface: "lan0"}
	}
	local := func(dst string, uid, gid uint32, cgroups ...uint64) Flow {
		return Flow{Dst: a(dst), Proto: ProtoTCP, DPort: 443, Local: true, UID: uid, GID: gid, Cgroups: cgroups}
	}
	cases := []struct {
		name string
		m    Match
		yes  []Flow
		no   []Flow
	}{
		{"sources, both families", Match{Sources: pfx("192.0.2.16/28", "2001:db8:1::/64")},
			[]Flow{fwd("192.0.2.20", "203.0.113.10", 6, 1, 80), fwd("2001:db8:1::5", "2001:db8:ff::1", 17, 1, 53)},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1, 80), local("203.0.113.10", 0, 0)}},
		{"destinations and ports", Match{Destinations: pfx("203.0.113.0/24"), Protocol: ProtoTCP, Ports: []PortRange{{80, 80}, {8000, 8999}}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1, 8080), {Dst: a("203.0.113.9"), Proto: ProtoTCP, DPort: 80, Local: true}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 17, 1, 80), fwd("192.0.2.10", "198.51.100.1", 6, 1, 80)}},
		{"ports of tcp or udp", Match{Ports: []PortRange{{53, 53}}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1, 53), fwd("192.0.2.10", "203.0.113.10", 17, 1, 53)},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 1, 1, 53)}},
		{"source ports", Match{Protocol: ProtoUDP, SourcePorts: []PortRange{{51820, 51820}}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 17, 51820, 9)},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 17, 51821, 51820), fwd("192.0.2.10", "203.0.113.10", 6, 51820, 9)}},
		{"a source port range", Match{Protocol: ProtoTCP, SourcePorts: []PortRange{{1024, 2047}, {2048, 65535}}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1024, 9), fwd("192.0.2.10", "203.0.113.10", 6, 65535, 9)},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1023, 9), fwd("192.0.2.10", "203.0.113.10", 6, 1, 9)}},
		{"users and groups", Match{UIDs: []uint32{1001}, GIDs: []uint32{0}},
			[]Flow{local("203.0.113.10", 1001, 0)},
			[]Flow{local("203.0.113.10", 1001, 1001), local("203.0.113.10", 0, 0), fwd("192.0.2.10", "203.0.113.10", 6, 1, 80)}},
		{"cgroups by level", Match{Services: []string{"a.service"}, Cgroups: []CgroupMatch{{Level: 2, ID: 9}}},
			[]Flow{local("203.0.113.10", 0, 0, 1, 5, 9), local("203.0.113.10", 0, 0, 1, 5, 9, 12)},
			[]Flow{local("203.0.113.10", 0, 0, 1, 9), local("203.0.113.10", 0, 0, 1, 5, 8)}},
		{"a service not running matches nothing", Match{Services: []string{"a.service"}},
			nil, []Flow{local("203.0.113.10", 0, 0, 1, 5, 9)}},
		{"in_interfaces", Match{InInterfaces: []string{"lan0"}},
			[]Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1, 80)},
			[]Flow{{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), InIface: "lan1"}}},
		{"families that do not meet", Match{Sources: pfx("192.0.2.0/24"), Destinations: pfx("2001:db8::/32")},
			nil, []Flow{fwd("192.0.2.10", "203.0.113.10", 6, 1, 80), fwd("2001:db8:1::5", "2001:db8::1", 6, 1, 80)}},
	}
	for _, c := range cases {
		comp := Compile("p", c.m)
		for _, f := range c.yes {
			if !comp.Matches(f) {
				t.Errorf("%s: %+v does not match", c.name, f)
			}
		}
		for _, f := range c.no {
			if comp.Matches(f) {
				t.Errorf("%s: %+v matches", c.name, f)
			}
		}
	}
}

// A domain policy looks its destination up in a learned set per family,
// which Flow.Learned stands for in explain, and is never folded into a
// map (its elements are not known when the table is built).
func TestDomains(t *testing.T) {
	a := netip.MustParseAddr
	c := Compile("tv", Match{Domains: []string{"example.com"}, Sources: pfx("192.0.2.0/24")})
	var names []string
	for _, s := range c.Sets {
		if !s.Learned || len(s.Elems) != 0 {
			t.Errorf("set %s: learned %v, %d elements", s.Name, s.Learned, len(s.Elems))
		}
		names = append(names, s.Name)
	}
	// The source prefix is one comparison; only the learned sets remain.
	if got := fmt.Sprint(names); got != "[p_tv_dom4]" {
		t.Errorf("sets %s, want [p_tv_dom4] (sources are IPv4 only)", got)
	}
	if got := c.Forward[0].Conds[1].Text; got != "ip daddr @p_tv_dom4" {
		t.Errorf("condition %q", got)
	}
	learned := func(set string, key []byte) bool {
		return set == "p_tv_dom4" && netip.AddrFrom4([4]byte(key)) == a("203.0.113.10")
	}
	f := Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: ProtoTCP, DPort: 443, InIface: "lan0", Learned: learned}
	if !c.Matches(f) {
		t.Error("a learned destination does not match")
	}
	if other := (Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.11"), Proto: ProtoTCP, Learned: learned}); c.Matches(other) {
		t.Error("an address not learned matches")
	}
	f.Learned = nil
	if c.Matches(f) {
		t.Error("matched with nothing learned")
	}
	local := Compile("tv", Match{Domains: []string{"example.com"}})
	if len(local.Local) != 2 || len(local.Forward) != 2 {
		t.Errorf("%d local and %d forwarded rules, want 2 each (one per family)", len(local.Local), len(local.Forward))
	}
	var cs []Compiled
	for i := range 2 * FoldMin {
		cs = append(cs, Compile(fmt.Sprintf("d%d", i), Match{Domains: []string{fmt.Sprintf("d%d.example", i)}}))
	}
	for _, prog := range Build(cs) {
		for _, it := range prog {
			if it.Map != nil {
				t.Fatalf("domain policies folded into map %s", it.Map.Name)
			}
		}
	}
}
