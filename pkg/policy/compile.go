package policy

import (
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
	return Cond{Text: text + " @" + s.Name, Load: l, Set: s}
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
	if !local && len(m.InInterfaces) > 0 {
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
	if len(sources) > 0 || len(m.Destinations) > 0 {
		for _, f := range inet.Families {
			src, dst := prefixIntervals(sources, f), prefixIntervals(m.Destinations, f)
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
				s := set(what, func() *Set { return PrefixSet("", a.list, f) })
				text, l := AddrLoad(f, a.addr)
				c := lookupCond(text, s, l)
				if len(fs) == 0 {
					// nft lists the nfproto dependency implicitly, once.
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
		if len(m.UIDs) > 0 {
			s := set("uid", func() *Set { return u32Set(TypeUID, m.UIDs) })
			who = append(who, lookupCond("meta skuid", s, Load{Kind: LoadMeta, Meta: MetaSKUID}))
		}
		if len(m.GIDs) > 0 {
			s := set("gid", func() *Set { return u32Set(TypeGID, m.GIDs) })
			who = append(who, lookupCond("meta skgid", s, Load{Kind: LoadMeta, Meta: MetaSKGID}))
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
			cgroups = append(cgroups, []Cond{lookupCond(fmt.Sprintf("socket cgroupv2 level %d", lvl), s,
				Load{Kind: LoadCgroup, Level: uint32(lvl)})})
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
			s := set(pk.what, func() *Set { return &Set{Type: TypeInetService, Interval: true, Elems: portElems(pk.ranges)} })
			if m.Protocol == ProtoAny {
				l4 = append(l4, lookupCond("th "+pk.field, s, pk.load))
				continue
			}
			// nft folds `meta l4proto udp th dport` into `udp dport`.
			c := lookupCond(ProtoName(m.Protocol)+" "+pk.field, s, pk.load)
			c.L4Proto = m.Protocol
			l4 = append(l4, c)
		}
	case m.Protocol != ProtoAny:
		l4 = append(l4, Cond{Text: "meta l4proto " + ProtoName(m.Protocol),
			Load: Load{Kind: LoadMeta, Meta: MetaL4Proto}, Eq: []byte{m.Protocol}})
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

// tcpOrUDP is `meta l4proto { tcp, udp }`: ports exist only there.
func tcpOrUDP() Cond {
	s := &Set{Type: TypeInetProto, Elems: []Elem{{Key: []byte{ProtoTCP}, Text: "tcp"}, {Key: []byte{ProtoUDP}, Text: "udp"}}}
	return Cond{Text: "meta l4proto " + s.InlineText(), Load: Load{Kind: LoadMeta, Meta: MetaL4Proto}, Set: s}
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
