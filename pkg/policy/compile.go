package policy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/wanpin/wanpin/pkg/inet"
)

// LoadKind says where a condition's key comes from.
type LoadKind uint8

const (
	// LoadMeta: packet metadata (meta iifname, meta skuid...).
	LoadMeta LoadKind = iota + 1
	// LoadPayload: bytes of a header (ip saddr, th dport...).
	LoadPayload
	// LoadCgroup: the socket's cgroup v2 ancestor at a level.
	LoadCgroup
)

// MetaKey is a meta expression's key.
type MetaKey uint8

const (
	MetaIIFName MetaKey = iota + 1
	MetaSKUID
	MetaSKGID
	MetaL4Proto
)

// Base is a payload's header.
type Base uint8

const (
	BaseNetwork Base = iota + 1
	BaseTransport
)

// Load is how nftables fetches a condition's key into a register: a meta
// key, Len bytes at Offset of a header, or the socket's cgroup at Level.
// pkg/rules turns it into an expression; Flow.load reads the same bytes.
type Load struct {
	Kind   LoadKind
	Meta   MetaKey
	Base   Base
	Offset uint32
	Len    uint32
	Level  uint32
}

// Cond is one condition of a rule: Load, then a lookup in Set or a
// comparison with Eq. Before it, invisible in nft's listing, a rule may
// need the packet's family (NFProto: nft prints `ip saddr`, which means
// `meta nfproto ipv4` first) or its transport protocol (L4Proto: `udp
// dport` means `meta l4proto udp` first).
type Cond struct {
	Text    string      // as `nft list` prints it
	NFProto inet.Family // 0: no family dependency
	L4Proto uint8       // 0: no protocol dependency
	Load    Load
	Set     *Set   // a named or anonymous set to look the key up in
	Eq      []byte // or the value to compare with, when Set is nil
	Mask    []byte // and, with Eq, the bits of the key compared (nil: all)
	// Last makes the comparison a range: the key is from Eq to Last, both
	// included, compared as big-endian numbers (ports).
	Last []byte
	// Key is the key as nft prints it ("ip daddr"), Value the compared
	// value ("192.0.2.0/24") when Set is nil.
	Key, Value string
}

// Rule is a conjunction of conditions ending in `goto pol_<policy>`.
type Rule struct {
	Conds []Cond
}

// Compiled is one policy compiled: its rules for forwarded traffic
// (prerouting) and for the router's own (output), and the named sets they
// look up, in the order they are created (the order nft lists them).
type Compiled struct {
	Name    string
	Forward []Rule
	Local   []Rule
	Sets    []*Set
}

// Compile turns one policy's match keys into rules. A policy that can
// never match (services named but none running, or address keys whose
// families do not meet) compiles to no rules at all: it matches nothing
// rather than everything. Forwarded rules come only for a policy that is
// not local-only, local rules only for one that is not forward-only.
func Compile(name string, m Match) Compiled {
	c := Compiled{Name: name}
	sets := map[string]*Set{}
	set := func(what string, mk func() *Set) *Set {
		n := fmt.Sprintf("p_%s_%s", name, what)
		if s, ok := sets[n]; ok {
			return s
		}
		s := mk()
		s.Name = n
		sets[n] = s
		c.Sets = append(c.Sets, s)
		return s
	}
	if !m.LocalOnly() {
		c.Forward = compile(m, false, set)
	}
	if !m.ForwardOnly() {
		c.Local = compile(m, true, set)
	}
	return c
}

func lookupCond(text string, s *Set, l Load) Cond {
	return Cond{Text: text + " @" + s.Name, Key: text, Load: l, Set: s}
}

// A list of one value compiles to a comparison, not a set: the kernel
// finds a set by name with a walk of the table's list of sets, for every
// set created and every rule and element that names one, so N policies
// with a set each cost N^2 name comparisons per apply (measured: 10,000
// policies of one destination each, 20,000 sets, 32 s in
// nft_set_lookup_global and nf_tables_newset). One value is the usual
// shape of a generated policy (a host, a port, a user).

// eqCond compares the key with one value.
func eqCond(key, value string, l Load, v []byte) Cond {
	return Cond{Text: key + " " + value, Key: key, Value: value, Load: l, Eq: v}
}

// prefixCond matches one prefix of family f: a comparison of the masked
// key, which nft lists as `ip daddr 192.0.2.0/24` (a whole address
// compares all bits, `ip daddr 192.0.2.10`). ok is false when the
// merged ranges ivs of the family's addresses are not one prefix.
func prefixCond(text string, l Load, ivs []interval, f inet.Family) (Cond, bool) {
	if len(ivs) != 1 {
		return Cond{}, false
	}
	width := f.Bytes()
	span := ivs[0].last.sub(ivs[0].first)
	if span.trailingOnes() != span.onesCount() || !ivs[0].first.and(span).isZero() {
		return Cond{}, false
	}
	a := u128ToAddr(ivs[0].first, width)
	bits := 8*width - span.onesCount()
	if bits == 8*width {
		return eqCond(text, a.String(), l, a.AsSlice()), true
	}
	mask := make([]byte, width)
	for i := range bits {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	c := eqCond(text, fmt.Sprintf("%s/%d", a, bits), l, a.AsSlice())
	c.Mask = mask
	return c, true
}

// oneRange is the one range that ranges merge into, if they do: a
// comparison (`tcp sport 1-1024`), not a set.
func oneRange(ranges []PortRange) (PortRange, bool) {
	in := make([]interval, 0, len(ranges))
	for _, r := range ranges {
		in = append(in, interval{u128{0, uint64(r.First)}, u128{0, uint64(r.Last)}})
	}
	m := mergeIntervals(in, 2)
	if len(m) != 1 {
		return PortRange{}, false
	}
	return PortRange{First: uint16(m[0].first.lo), Last: uint16(m[0].last.lo)}, true
}

// Transport header fields.
var (
	loadSport = Load{Kind: LoadPayload, Base: BaseTransport, Offset: 0, Len: 2}
	loadDport = Load{Kind: LoadPayload, Base: BaseTransport, Offset: 2, Len: 2}
)

// Addr is which address of the network header a condition looks at.
type Addr uint8

const (
	Source Addr = iota + 1
	Destination
)

// AddrLoad is ip/ip6 saddr/daddr.
func AddrLoad(f inet.Family, a Addr) (string, Load) {
	switch {
	case f == inet.IPv4 && a == Source:
		return "ip saddr", Load{Kind: LoadPayload, Base: BaseNetwork, Offset: 12, Len: 4}
	case f == inet.IPv4:
		return "ip daddr", Load{Kind: LoadPayload, Base: BaseNetwork, Offset: 16, Len: 4}
	case a == Source:
		return "ip6 saddr", Load{Kind: LoadPayload, Base: BaseNetwork, Offset: 8, Len: 16}
	}
	return "ip6 daddr", Load{Kind: LoadPayload, Base: BaseNetwork, Offset: 24, Len: 16}
}

// compile: one rule per address family that applies and per cgroup level.
// local selects the output hook (users, groups, services; no sources or
// inbound interfaces) over prerouting.
func compile(m Match, local bool, set func(string, func() *Set) *Set) []Rule {
	var head []Cond // matchers in front of the family-specific ones
	if ifs := uniq(m.InInterfaces); !local && len(ifs) == 1 {
		head = append(head, eqCond("iifname", fmt.Sprintf("%q", ifs[0]), Load{Kind: LoadMeta, Meta: MetaIIFName}, IfnameKey(ifs[0])))
	} else if !local && len(m.InInterfaces) > 0 {
		s := set("iif", func() *Set {
			s := &Set{Type: TypeIfname}
			for _, n := range uniq(m.InInterfaces) {
				s.Elems = append(s.Elems, Elem{Key: IfnameKey(n), Text: fmt.Sprintf("%q", n)})
			}
			s.Sort()
			return s
		})
		head = append(head, lookupCond("iifname", s, Load{Kind: LoadMeta, Meta: MetaIIFName}))
	}

	sources := m.Sources
	if local {
		sources = nil
	}
	var fams [][]Cond // per family: its address matchers
	if len(sources) > 0 || len(m.Destinations) > 0 || len(m.Domains) > 0 {
		for _, f := range inet.Families {
			src, dst := prefixIntervals(sources, f), prefixIntervals(m.Destinations, f)
			merged := map[Addr][]interval{Source: src, Destination: dst}
			// Every non-empty matcher must match: a family without any
			// source (or destination) while others have some cannot match.
			if (len(sources) > 0 && len(src) == 0) || (len(m.Destinations) > 0 && len(dst) == 0) {
				continue
			}
			var fs []Cond
			for _, a := range []struct {
				addr Addr
				what string
				list []netip.Prefix
			}{{Source, "src", sources}, {Destination, "dst", m.Destinations}} {
				if len(a.list) == 0 {
					continue
				}
				what := a.what + "4"
				if f == inet.IPv6 {
					what = a.what + "6"
				}
				text, l := AddrLoad(f, a.addr)
				ivs := merged[a.addr]
				c, one := prefixCond(text, l, ivs, f)
				if !one {
					s := set(what, func() *Set { return intervalSet(ivs, f) })
					c = lookupCond(text, s, l)
				}
				if len(fs) == 0 {
					// nft lists the nfproto dependency implicitly, once.
					c.NFProto = f
				}
				fs = append(fs, c)
			}
			if len(m.Domains) > 0 {
				// Both families: a name has A and AAAA records.
				what := "dom4"
				if f == inet.IPv6 {
					what = "dom6"
				}
				text, l := AddrLoad(f, Destination)
				c := lookupCond(text, set(what, func() *Set { return &Set{Type: addrSetType(f), Learned: true} }), l)
				if len(fs) == 0 {
					c.NFProto = f
				}
				fs = append(fs, c)
			}
			fams = append(fams, fs)
		}
		if len(fams) == 0 {
			return nil
		}
	} else {
		fams = [][]Cond{nil}
	}

	var who []Cond
	if local {
		for _, k := range []struct {
			what string
			key  MetaKey
			t    SetType
			ids  []uint32
		}{{"uid", MetaSKUID, TypeUID, m.UIDs}, {"gid", MetaSKGID, TypeGID, m.GIDs}} {
			text, l := "meta sk"+k.what, Load{Kind: LoadMeta, Meta: k.key}
			switch ids := uniq(k.ids); len(ids) {
			case 0:
			case 1:
				who = append(who, eqCond(text, fmt.Sprint(ids[0]), l, Native32(ids[0])))
			default:
				s := set(k.what, func() *Set { return u32Set(k.t, ids) })
				who = append(who, lookupCond(text, s, l))
			}
		}
	}
	cgroups := [][]Cond{nil}
	if local && (len(m.Cgroups) > 0 || len(m.Services) > 0) {
		// No service resolved: the policy matches nothing rather than
		// everything.
		if len(m.Cgroups) == 0 {
			return nil
		}
		cgroups = nil
		for _, lvl := range cgroupLevels(m.Cgroups) {
			text, l := fmt.Sprintf("socket cgroupv2 level %d", lvl), Load{Kind: LoadCgroup, Level: uint32(lvl)}
			var ids []uint64
			for _, c := range m.Cgroups {
				if c.Level == lvl {
					ids = append(ids, c.ID)
				}
			}
			if ids = uniq(ids); len(ids) == 1 {
				cgroups = append(cgroups, []Cond{eqCond(text, fmt.Sprint(ids[0]), l, Native64(ids[0]))})
				continue
			}
			s := set(fmt.Sprintf("cg%d", lvl), func() *Set {
				s := &Set{Type: TypeCgroupV2}
				seen := map[uint64]bool{}
				for _, c := range m.Cgroups {
					if c.Level == lvl && !seen[c.ID] {
						seen[c.ID] = true
						s.Elems = append(s.Elems, Elem{Key: Native64(c.ID), Text: fmt.Sprint(c.ID)})
					}
				}
				s.Sort()
				return s
			})
			cgroups = append(cgroups, []Cond{lookupCond(text, s, l)})
		}
	}

	var l4 []Cond
	switch {
	case len(m.Ports) > 0 || len(m.SourcePorts) > 0:
		if m.Protocol == ProtoAny {
			l4 = append(l4, tcpOrUDP())
		}
		for _, pk := range []struct {
			what, field string
			ranges      []PortRange
			load        Load
		}{{"port", "dport", m.Ports, loadDport}, {"sport", "sport", m.SourcePorts, loadSport}} {
			if len(pk.ranges) == 0 {
				continue
			}
			text := "th " + pk.field
			if m.Protocol != ProtoAny {
				// nft folds `meta l4proto udp th dport` into `udp dport`.
				text = ProtoName(m.Protocol) + " " + pk.field
			}
			var c Cond
			if r, one := oneRange(pk.ranges); one && r.First == r.Last {
				c = eqCond(text, fmt.Sprint(r.First), pk.load, binary.BigEndian.AppendUint16(nil, r.First))
			} else if one {
				c = eqCond(text, fmt.Sprintf("%d-%d", r.First, r.Last), pk.load, binary.BigEndian.AppendUint16(nil, r.First))
				c.Last = binary.BigEndian.AppendUint16(nil, r.Last)
			} else {
				s := set(pk.what, func() *Set { return &Set{Type: TypeInetService, Interval: true, Elems: portElems(pk.ranges)} })
				c = lookupCond(text, s, pk.load)
			}
			if m.Protocol != ProtoAny {
				c.L4Proto = m.Protocol
			}
			l4 = append(l4, c)
		}
	case m.Protocol != ProtoAny:
		l4 = append(l4, eqCond("meta l4proto", ProtoName(m.Protocol), Load{Kind: LoadMeta, Meta: MetaL4Proto}, []byte{m.Protocol}))
	}

	var out []Rule
	for _, fam := range fams {
		for _, cg := range cgroups {
			var r Rule
			r.Conds = append(r.Conds, head...)
			r.Conds = append(r.Conds, fam...)
			r.Conds = append(r.Conds, who...)
			r.Conds = append(r.Conds, cg...)
			r.Conds = append(r.Conds, l4...)
			out = append(out, r)
		}
	}
	return out
}

// TCPOrUDP is the one set every policy with ports and any protocol looks
// the transport protocol up in (ports exist only there): shared, not
// anonymous per rule, because every set costs each later set lookup of
// the apply a step of the kernel's walk (see eqCond).
var TCPOrUDP = &Set{Name: "tcp_udp", Type: TypeInetProto,
	Elems: []Elem{{Key: []byte{ProtoTCP}, Text: "tcp"}, {Key: []byte{ProtoUDP}, Text: "udp"}}}

// tcpOrUDP is `meta l4proto @tcp_udp`.
func tcpOrUDP() Cond {
	return lookupCond("meta l4proto", TCPOrUDP, Load{Kind: LoadMeta, Meta: MetaL4Proto})
}

// ProtoName is nft's name of a transport protocol.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return fmt.Sprint(p)
}

func u32Set(t SetType, vs []uint32) *Set {
	s := &Set{Type: t}
	for _, v := range uniq(vs) {
		s.Elems = append(s.Elems, Elem{Key: Native32(v), Text: fmt.Sprint(v)})
	}
	s.Sort()
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
