package rules

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// policySets compiles one policy's matchers into rules. Each matcher is a
// named set (`p_<policy>_<what>`), so a policy with 10,000 destinations
// costs a packet one lookup. Sets are created on first use and shared by
// the prerouting and output rules of the policy.
type policySets struct {
	b    *builder
	p    Policy
	sets map[string]*set
}

func (ps *policySets) set(what string, mk func() *set) string {
	name := fmt.Sprintf("p_%s_%s", ps.p.Name, what)
	if ps.sets == nil {
		ps.sets = map[string]*set{}
	}
	if _, ok := ps.sets[name]; !ok {
		s := mk()
		s.name = name
		ps.sets[name] = ps.b.addSet(s)
	}
	return name
}

func (ps *policySets) lookupFrag(text, setName string, load ...expr.Any) frag {
	return frag{text: text + " @" + setName, exprs: append(load, lookup(setName))}
}

// rules: one rule per address family that applies and per cgroup level,
// each ending in `goto pol_<policy>`. local selects the output chain
// (users, groups, services, no sources or inbound interfaces) over
// prerouting.
func (ps *policySets) rules(local bool) []*rule {
	p := ps.p
	var head []frag // matchers in front of the family-specific ones
	if !local && len(p.InInterfaces) > 0 {
		name := ps.set("iif", func() *set {
			s := &set{key: typeIfname, typeText: "ifname", native: true}
			for _, n := range uniq(p.InInterfaces) {
				s.elems = append(s.elems, ifnameElem(n))
			}
			s.sortElems()
			return s
		})
		t, l := ifnameMeta(true)
		head = append(head, ps.lookupFrag(t, name, l))
	}

	src4, src6 := prefixIntervals(p.Sources)
	dst4, dst6 := prefixIntervals(p.Destinations)
	if local {
		src4, src6 = nil, nil
	}
	var fams [][]frag // per family: its address matchers
	if (!local && len(p.Sources) > 0) || len(p.Destinations) > 0 {
		for _, f := range []struct {
			v4       bool
			src, dst []interval
		}{{true, src4, dst4}, {false, src6, dst6}} {
			// Every non-empty matcher must match: a family without any
			// source (or destination) while others have some cannot match.
			if (!local && len(p.Sources) > 0 && len(f.src) == 0) || (len(p.Destinations) > 0 && len(f.dst) == 0) {
				continue
			}
			var fs []frag
			first := true
			for _, a := range []struct {
				src bool
				ivs []interval
			}{{true, f.src}, {false, f.dst}} {
				if len(a.ivs) == 0 {
					continue
				}
				name := ps.addrSet(f.v4, a.src, a.ivs)
				t, load := addrPayload(f.v4, a.src)
				var ex []expr.Any
				if first {
					// nft lists the nfproto dependency implicitly.
					ex = nfprotoIs(f.v4)
					first = false
				}
				fs = append(fs, ps.lookupFrag(t, name, append(ex, load)...))
			}
			fams = append(fams, fs)
		}
		if len(fams) == 0 {
			return nil
		}
	} else {
		fams = [][]frag{nil}
	}

	var who []frag
	if local {
		if len(p.UIDs) > 0 {
			name := ps.set("uid", func() *set { return u32Set(typeUID, "uid", p.UIDs) })
			who = append(who, ps.lookupFrag("meta skuid", name, &expr.Meta{Key: expr.MetaKeySKUID, Register: reg}))
		}
		if len(p.GIDs) > 0 {
			name := ps.set("gid", func() *set { return u32Set(typeGID, "gid", p.GIDs) })
			who = append(who, ps.lookupFrag("meta skgid", name, &expr.Meta{Key: expr.MetaKeySKGID, Register: reg}))
		}
	}
	cgroups := [][]frag{nil}
	if local && (len(p.Cgroups) > 0 || p.ServicesUnresolved) {
		// No service resolved: the policy matches nothing rather than
		// everything.
		if len(p.Cgroups) == 0 {
			return nil
		}
		cgroups = nil
		for _, lvl := range cgroupLevels(p.Cgroups) {
			name := ps.set(fmt.Sprintf("cg%d", lvl), func() *set {
				s := &set{key: typeCgroup, typeText: "cgroupsv2", native: true}
				seen := map[uint64]bool{}
				for _, c := range p.Cgroups {
					if c.Level == lvl && !seen[c.ID] {
						seen[c.ID] = true
						s.elems = append(s.elems, element{key: native64(c.ID), text: fmt.Sprint(c.ID)})
					}
				}
				s.sortElems()
				return s
			})
			cgroups = append(cgroups, []frag{ps.lookupFrag(fmt.Sprintf("socket cgroupv2 level %d", lvl), name,
				&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: uint32(lvl), Register: reg})})
		}
	}

	var l4 []frag
	switch {
	case len(p.Ports) > 0:
		name := ps.set("port", func() *set {
			return &set{key: typePort, typeText: "inet_service", interval: true,
				elems: intervalElems(portIntervals(p.Ports), 2, portIntervalText)}
		})
		if p.Protocol == 0 {
			l4 = append(l4, l4protoTCPUDP(), ps.lookupFrag("th dport", name, thDport()))
		} else {
			// nft folds `meta l4proto tcp th dport` into `tcp dport`.
			f := l4protoIs(p.Protocol)
			l4 = append(l4, ps.lookupFrag(protoName(p.Protocol)+" dport", name, append(f.exprs, thDport())...))
		}
	case p.Protocol != 0:
		l4 = append(l4, l4protoIs(p.Protocol))
	}

	var out []*rule
	for _, fam := range fams {
		for _, cg := range cgroups {
			var fs []frag
			fs = append(fs, head...)
			fs = append(fs, fam...)
			fs = append(fs, who...)
			fs = append(fs, cg...)
			fs = append(fs, l4...)
			fs = append(fs, verdict(expr.VerdictGoto, polChain(p)))
			out = append(out, newRule(fs...))
		}
	}
	return out
}

func (ps *policySets) addrSet(v4, src bool, ivs []interval) string {
	what := "dst"
	if src {
		what = "src"
	}
	width, key, typ := 16, typeIPv6, "ipv6_addr"
	if v4 {
		what += "4"
		width, key, typ = 4, typeIPv4, "ipv4_addr"
	} else {
		what += "6"
	}
	return ps.set(what, func() *set {
		return &set{key: key, typeText: typ, interval: true,
			elems: intervalElems(ivs, width, func(iv interval) string { return addrIntervalText(iv, width) })}
	})
}

func u32Set(key nftables.SetDatatype, text string, vs []uint32) *set {
	s := &set{key: key, typeText: text, native: true}
	for _, v := range uniq(vs) {
		s.elems = append(s.elems, u32Elem(v))
	}
	s.sortElems()
	return s
}

func uniq[T comparable](vs []T) []T {
	seen := map[T]bool{}
	var out []T
	for _, v := range vs {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func cgroupLevels(cs []CgroupMatch) []int {
	var ls []int
	for _, c := range cs {
		ls = append(ls, c.Level)
	}
	slices.Sort(ls)
	return slices.Compact(ls)
}

func native64(v uint64) []byte { return binaryutil.NativeEndian.PutUint64(v) }
