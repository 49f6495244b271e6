package policy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// sequential is the reference semantics: each policy's rules in order,
// the first that holds wins.
func sequential(cs []Compiled, f Flow) (int, bool) {
	for i, c := range cs {
		if c.Matches(f) {
			return i, true
		}
	}
	return 0, false
}

// TestProgramMatchesSequential: a Program, folds and all, picks the same
// policy as evaluating every policy in order, for random policies of
// every shape (one key of each kind, overlapping prefixes of both
// families, several keys, none) and random flows.
func TestProgramMatchesSequential(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pfx4 := func() netip.Prefix {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(256))})
		return netip.PrefixFrom(a, 24+rng.IntN(9)).Masked()
	}
	pfx6 := func() netip.Prefix {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(256))})
		return netip.PrefixFrom(a, 120+rng.IntN(9)).Masked()
	}
	ifs := []string{"lan0", "lan1", "br-guest", "wg0"}
	// favourite: a one-key shape most policies of a round have (long
	// runs to fold), or -1.
	randomMatch := func(favourite int) Match {
		var m Match
		k := rng.IntN(10)
		if favourite >= 0 && rng.IntN(10) > 0 {
			k = favourite
		}
		switch k {
		case 0, 1, 2:
			m.Destinations = []netip.Prefix{pfx4()}
		case 3:
			m.Destinations = []netip.Prefix{pfx6()}
		case 4:
			m.Sources = []netip.Prefix{pfx4(), pfx4()}
		case 5:
			m.InInterfaces = []string{ifs[rng.IntN(len(ifs))]}
		case 6:
			m.UIDs = []uint32{uint32(rng.IntN(4))}
		case 7:
			m.Destinations = []netip.Prefix{pfx4(), pfx6()}
		case 8:
			m.Destinations = []netip.Prefix{pfx4()}
			m.Protocol = ProtoTCP
			m.Ports = []PortRange{{First: 443, Last: 443}}
		case 9:
			m.Sources = []netip.Prefix{pfx4()}
			m.InInterfaces = ifs[:2]
		}
		return m
	}
	randomFlow := func() Flow {
		f := Flow{Proto: []uint8{ProtoTCP, ProtoUDP}[rng.IntN(2)], DPort: []uint16{443, 53}[rng.IntN(2)]}
		if rng.IntN(2) == 0 {
			f.Src = netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(256))})
			f.Dst = netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(256))})
		} else {
			f.Src = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(256))})
			f.Dst = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(256))})
		}
		if rng.IntN(3) == 0 {
			f.Local, f.UID = true, uint32(rng.IntN(4))
			f.Src = netip.Addr{}
		} else {
			f.InIface = ifs[rng.IntN(len(ifs))]
		}
		return f
	}
	folded := 0
	for round := range 200 {
		var cs []Compiled
		n := 1 + rng.IntN(60)
		fav := -1
		if round%2 == 0 {
			fav = []int{0, 3, 5, 6, 7}[rng.IntN(5)]
		}
		for i := range n {
			cs = append(cs, Compile(fmt.Sprintf("p%d", i), randomMatch(fav)))
		}
		progs := Build(cs)
		for _, p := range progs {
			for _, it := range p {
				if it.Map != nil {
					folded++
				}
			}
		}
		for range 200 {
			f := randomFlow()
			p := progs[0]
			if f.Local {
				p = progs[1]
			}
			wantI, wantOK := sequential(cs, f)
			gotI, gotOK := p.Match(f)
			if gotOK != wantOK || gotI != wantI {
				t.Fatalf("round %d, flow %+v: program says %d %v, policies in order %d %v", round, f, gotI, gotOK, wantI, wantOK)
			}
		}
	}
	if folded < 200 {
		t.Errorf("only %d maps folded: the test does not exercise folding", folded)
	}
	t.Logf("%d maps folded", folded)
}

// 10,000 one-destination policies fold into one map per family.
func TestProgramFoldsManyPolicies(t *testing.T) {
	var cs []Compiled
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0})
		cs = append(cs, Compile(fmt.Sprintf("p%d", i), Match{Destinations: []netip.Prefix{netip.PrefixFrom(a, 24)}}))
	}
	h := Build(cs)
	p := h[Forwarded]
	if h[Local][0].Map != p[0].Map {
		t.Errorf("the hooks fold the same destinations into two maps")
	}
	if len(p) != 1 || p[0].Map == nil || len(p[0].Map.Elems) != 10000 {
		t.Fatalf("program of %d items (first map %v elements)", len(p), len(p[0].Map.Elems))
	}
	f := Flow{Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("10.1.2.3"), Proto: ProtoTCP, InIface: "lan0"}
	if i, ok := p.Match(f); !ok || i != 0x102 {
		t.Errorf("10.1.2.3 matched policy %d %v, want %d", i, ok, 0x102)
	}
}

// The shortcut for disjoint sets makes the map the sweep makes.
func TestDisjointSetsAsSwept(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	taken := 0
	for round := range 500 {
		var g group
		for i := range 2 + rng.IntN(8) {
			var m Match
			for range 2 + rng.IntN(3) {
				// 203.0.113.0/24 in /29s and smaller: disjoint often,
				// touching and overlapping sometimes.
				a := netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(32) * 8)})
				m.Destinations = append(m.Destinations, netip.PrefixFrom(a, 29+rng.IntN(3)).Masked())
			}
			c := Compile(fmt.Sprintf("p%d", i), m)
			r := c.Forward[0]
			if r.Conds[0].Set == nil {
				continue // merged into one range: a comparison
			}
			k, _ := foldKey(r)
			g.key = k
			g.rules = append(g.rules, pending{policy: i, rule: r})
		}
		got, ok := disjointSets(&g)
		if !ok {
			continue
		}
		taken++
		want := sweptElems(&g, 4)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d elements, the sweep makes %d", round, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i].Key, want[i].Key) || !bytes.Equal(got[i].End, want[i].End) ||
				got[i].Policy != want[i].Policy || got[i].Text != want[i].Text {
				t.Fatalf("round %d, element %d: %+v, the sweep makes %+v", round, i, got[i], want[i])
			}
		}
	}
	if taken < 20 {
		t.Errorf("the shortcut was taken %d times of 500: the test does not exercise it", taken)
	}
	t.Logf("shortcut taken %d times of 500", taken)
}
