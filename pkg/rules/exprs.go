package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// frag is one piece of a rule: the text nft lists for it and the
// expressions that make nft list exactly that text. Each helper below
// emits the same expression sequence nft 1.0.6 generates for the text, so
// `nft list` decodes it back to the same words.
type frag struct {
	text  string
	exprs []expr.Any
	anon  *set // anonymous set the fragment's lookup refers to
}

const reg = 1 // NFT_REG_1: every expression here works in one register

// regConcat2 is where the second field of a concatenated key goes, right
// after a 32-bit first one: NFT_REG32_01. The kernel's 32-bit registers
// overlay the 128-bit ones (NFT_REG_1 is NFT_REG32_00..03), so a lookup
// from reg reads the whole key.
const regConcat2 = 9

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func hexMark(v uint32) string { return fmt.Sprintf("0x%08x", v) }

func lookup(name string) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg, SetName: name}
}

func vmapLookup(name string) *expr.Lookup {
	// DestRegister 0 is the verdict register: IsDestRegSet makes the
	// library send it, which turns the lookup into a verdict map.
	return &expr.Lookup{SourceRegister: reg, DestRegister: 0, IsDestRegSet: true, SetName: name}
}

func cmpReg(op expr.CmpOp, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: op, Register: reg, Data: data}
}

func verdict(kind expr.VerdictKind, chain string) frag {
	v := &expr.Verdict{Kind: kind, Chain: chain}
	return frag{text: verdictText(v), exprs: []expr.Any{v}}
}

func verdictText(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictReturn:
		return "return"
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

// maskedMark loads meta mark or ct mark and ANDs it with mask. A full mask
// needs no bitwise expression (and nft would print none).
func maskedMark(src string, load expr.Any, mask uint32) frag {
	f := frag{text: src, exprs: []expr.Any{load}}
	if mask != ^uint32(0) {
		f.text += " & " + hexMark(mask)
		f.exprs = append(f.exprs, &expr.Bitwise{
			SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: native32(mask), Xor: native32(0),
		})
	}
	return f
}

func metaMarkLoad() expr.Any { return &expr.Meta{Key: expr.MetaKeyMARK, Register: reg} }
func ctMarkLoad() expr.Any   { return &expr.Ct{Key: expr.CtKeyMARK, Register: reg} }

// setMark is `<what> mark set <what> mark & ~M | X`: one bitwise
// expression (mask ~M, xor X) so bits outside M survive. With a full mask
// the old value does not matter and an immediate is enough.
func setMark(ct bool, mask, mark uint32) frag {
	what, load := "meta mark", metaMarkLoad()
	var store expr.Any = &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg}
	if ct {
		what, load = "ct mark", ctMarkLoad()
		store = &expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg}
	}
	if mask == ^uint32(0) {
		return frag{
			text:  fmt.Sprintf("%s set %s", what, hexMark(mark)),
			exprs: []expr.Any{&expr.Immediate{Register: reg, Data: native32(mark)}, store},
		}
	}
	return frag{
		text: fmt.Sprintf("%s set %s%s", what, what, bitwiseText(^mask, mark)),
		exprs: []expr.Any{load,
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(^mask), Xor: native32(mark)},
			store},
	}
}

// bitwiseText prints a kernel bitwise (r & mask) ^ xor the way nft 1.0.6
// decodes it: xor bits outside the mask are shown as OR and folded into
// the AND operand (so mask 0xffff00ff xor 0x100 lists as
// "& 0xffff01ff | 0x00000100"); an all-ones AND and a zero XOR vanish.
func bitwiseText(mask, xor uint32) string {
	or := xor &^ mask
	xor ^= or
	mask |= or
	s := ""
	if mask != ^uint32(0) {
		s += " & " + hexMark(mask)
	}
	if xor != 0 {
		s += " ^ " + hexMark(xor)
	}
	if or != 0 {
		s += " | " + hexMark(or)
	}
	return s
}

func ctStateNotNew() frag {
	return frag{text: "ct state != new", exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg},
		cmpReg(expr.CmpOpNeq, native32(expr.CtStateBitNEW)),
	}}
}

func ctStateNew() frag {
	// A bitmask match, as nft encodes `ct state new`.
	return frag{text: "ct state new", exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: native32(expr.CtStateBitNEW), Xor: native32(0)},
		cmpReg(expr.CmpOpNeq, native32(0)),
	}}
}

// mptcpJoin is `tcp option mptcp subtype 1`: the MPTCP option's subtype
// (its third byte's high nibble) is MP_JOIN, which only a subflow's SYN
// (and its SYN-ACK and ACK) carries. nft 1.0.6 takes the number, not
// the name.
func mptcpJoin() frag {
	return frag{text: "tcp option mptcp subtype 1", exprs: []expr.Any{
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: 30, Offset: 2, Len: 1, DestRegister: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 1, Mask: []byte{0xf0}, Xor: []byte{0}},
		cmpReg(expr.CmpOpEq, []byte{0x10}),
	}}
}

// fibDaddrLocal is `fib daddr type local`.
func fibDaddrLocal() frag {
	return frag{text: "fib daddr type local", exprs: []expr.Any{
		&expr.Fib{Register: reg, ResultADDRTYPE: true, FlagDADDR: true},
		cmpReg(expr.CmpOpEq, native32(unix.RTN_LOCAL)),
	}}
}

// fibDaddrNotUnicast is `fib daddr type { local, broadcast, multicast }`:
// in the output hook meta pkttype is always "host", so the address type is
// what tells the router's own broadcast and multicast apart.
func fibDaddrNotUnicast() frag {
	s := &set{anonymous: true, key: typeFibAddr, typeText: "fib_addrtype", native: true}
	for _, t := range []struct {
		v    uint32
		name string
	}{{unix.RTN_LOCAL, "local"}, {unix.RTN_BROADCAST, "broadcast"}, {unix.RTN_MULTICAST, "multicast"}} {
		s.elems = append(s.elems, element{key: native32(t.v), text: t.name})
	}
	return frag{text: "fib daddr type " + s.inlineText(), anon: s, exprs: []expr.Any{
		&expr.Fib{Register: reg, ResultADDRTYPE: true, FlagDADDR: true},
		lookup(""),
	}}
}

// pkttypeNotHost is `meta pkttype != host` (nft's name for unicast).
func pkttypeNotHost() frag {
	return frag{text: "meta pkttype != host", exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: reg},
		cmpReg(expr.CmpOpNeq, []byte{unix.PACKET_HOST}),
	}}
}

func nfprotoIs(f inet.Family) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{f.NFProto()})}
}

// saddr and daddr name the network header's addresses.
const (
	saddr = policy.Source
	daddr = policy.Destination
)

// addrPayload loads ip/ip6 saddr/daddr. The caller puts the nfproto
// dependency in front once per rule: nft prints it implicitly.
func addrPayload(f inet.Family, a policy.Addr) (string, expr.Any) {
	text, l := policy.AddrLoad(f, a)
	return text, loadExpr(l)
}

// ip6DaddrPrefix is `ip6 daddr <prefix>` for a prefix of whole bytes,
// loaded as nft does: only the prefix bytes, no bitwise.
func ip6DaddrPrefix(addr [16]byte, bits int, text string) frag {
	n := uint32(bits / 8)
	return frag{text: "ip6 daddr " + text, exprs: append(nfprotoIs(inet.IPv6),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: n},
		cmpReg(expr.CmpOpEq, addr[:n]))}
}

// ip6DaddrMasked is `ip6 daddr <prefix>` for a prefix that ends inside a
// byte: a full address load, a bitwise mask and a compare.
func ip6DaddrMasked(addr [16]byte, bits int, text string) frag {
	var mask [16]byte
	for i := 0; i < bits; i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return frag{text: "ip6 daddr " + text, exprs: append(nfprotoIs(inet.IPv6),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 16, Mask: mask[:], Xor: make([]byte, 16)},
		cmpReg(expr.CmpOpEq, addr[:]))}
}

func ifnameMeta(in bool) (string, expr.Any) {
	if in {
		return "iifname", &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}
	}
	return "oifname", &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}
}

func oifnameIs(n string) frag {
	t, load := ifnameMeta(false)
	return frag{text: fmt.Sprintf("%s %q", t, n), exprs: []expr.Any{load, cmpReg(expr.CmpOpEq, ifnameKey(n))}}
}

func masquerade() frag {
	return frag{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}}
}

// rejectDefault is plain `reject` in an inet table: ICMP or ICMPv6 port
// unreachable (type icmpx), whatever the protocol.
func rejectDefault() frag {
	return frag{text: "reject", exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH},
	}}
}

// numgenVmap is `numgen random mod N vmap { 0 : ..., N-1 : ... }`, the
// anonymous map m (big-endian keys, see choiceRules) inline: the number
// is converted to big-endian for the lookup, which nft lists as nothing.
func numgenVmap(mod uint32, m *set) frag {
	return frag{text: fmt.Sprintf("numgen random mod %d vmap %s", mod, m.inlineText()), anon: m, exprs: []expr.Any{
		&expr.Numgen{Register: reg, Modulus: mod, Type: unix.NFT_NG_RANDOM},
		&expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: 4, Size: 4},
		vmapLookup(""),
	}}
}

// ip6PrefixCmp is `ip6 saddr|daddr [!=] <prefix>`, loaded as nft does: the
// prefix's whole bytes and a compare, or the full address, a mask and a
// compare when the prefix ends inside a byte.
func ip6PrefixCmp(which policy.Addr, op expr.CmpOp, p netip.Prefix) frag {
	name, _ := addrPayload(inet.IPv6, which)
	off := uint32(24)
	if which == saddr {
		off = 8
	}
	text := name + " "
	if op == expr.CmpOpNeq {
		text += "!= "
	}
	text += p.String()
	a := p.Addr().As16()
	exprs := nfprotoIs(inet.IPv6)
	if p.Bits()%8 == 0 {
		n := uint32(p.Bits() / 8)
		exprs = append(exprs,
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			cmpReg(op, a[:n]))
		return frag{text: text, exprs: exprs}
	}
	var mask [16]byte
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	exprs = append(exprs,
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 16},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 16, Mask: mask[:], Xor: make([]byte, 16)},
		cmpReg(op, a[:]))
	return frag{text: text, exprs: exprs}
}

// natKind is source or destination NAT.
type natKind uint8

const (
	snat natKind = iota + 1
	dnat
)

// prefixNAT is `snat|dnat ip6 prefix to <prefix>`: the kernel's NETMAP,
// which keeps the address bits outside the prefix (the host part).
func prefixNAT(kind natKind, p netip.Prefix) frag {
	first := p.Addr().As16()
	last := first
	for i := p.Bits(); i < 128; i++ {
		last[i/8] |= 0x80 >> (i % 8)
	}
	typ, word := expr.NATTypeSourceNAT, "snat"
	if kind == dnat {
		typ, word = expr.NATTypeDestNAT, "dnat"
	}
	return frag{text: word + " ip6 prefix to " + p.String(), exprs: []expr.Any{
		&expr.Immediate{Register: reg, Data: first[:]},
		&expr.Immediate{Register: reg + 1, Data: last[:]},
		&expr.NAT{Type: typ, Family: unix.NFPROTO_IPV6, RegAddrMin: reg, RegAddrMax: reg + 1, Prefix: true},
	}}
}

// rejectIPv4 is `meta nfproto ipv4 reject`, which nft lists by its type.
func rejectIPv4() frag {
	r := rejectIn(inet.IPv4)
	return frag{text: r.text, exprs: append(nfprotoIs(inet.IPv4), r.exprs...)}
}

// rejectIn is the reject of a rule whose match already selects the
// family f (`ip daddr ...`): ICMP or ICMPv6 port unreachable, listed by
// its type. It is what nft makes of a plain `reject` in that rule, so
// the listing loads back into the same rule: a plain (icmpx) reject
// there would list as `reject` and come back from the text as this one,
// listed differently. The kernel sends the same for either.
func rejectIn(f inet.Family) frag {
	if f == inet.IPv6 {
		return frag{text: "reject with icmpv6 port-unreachable", exprs: []expr.Any{
			&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}}} // ICMPV6_PORT_UNREACH
	}
	return frag{text: "reject with icmp port-unreachable", exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}}} // ICMP_PORT_UNREACH
}

// isRejectDefault: f is rejectDefault's plain reject.
func isRejectDefault(f frag) bool {
	if len(f.exprs) != 1 {
		return false
	}
	r, ok := f.exprs[0].(*expr.Reject)
	return ok && r.Type == unix.NFT_REJECT_ICMPX_UNREACH
}

func ifnameKey(n string) []byte { return policy.IfnameKey(n) }

// loadExpr is the expression that loads what a policy condition names.
func loadExpr(l policy.Load) expr.Any {
	switch l.Kind {
	case policy.LoadMeta:
		key := map[policy.MetaKey]expr.MetaKey{
			policy.MetaIIFName: expr.MetaKeyIIFNAME,
			policy.MetaSKUID:   expr.MetaKeySKUID,
			policy.MetaSKGID:   expr.MetaKeySKGID,
			policy.MetaL4Proto: expr.MetaKeyL4PROTO,
		}[l.Meta]
		return &expr.Meta{Key: key, Register: reg}
	case policy.LoadPayload:
		base := expr.PayloadBaseNetworkHeader
		if l.Base == policy.BaseTransport {
			base = expr.PayloadBaseTransportHeader
		}
		return &expr.Payload{DestRegister: reg, Base: base, Offset: l.Offset, Len: l.Len}
	case policy.LoadCgroup:
		return &expr.Socket{Key: expr.SocketKeyCgroupv2, Level: l.Level, Register: reg}
	}
	panic(fmt.Sprintf("rules: unknown load kind %d", l.Kind))
}

// condFrag is one policy condition: its dependencies (nft lists them
// implicitly), the load, and the lookup or comparison.
func condFrag(c policy.Cond) frag {
	var ex []expr.Any
	if c.NFProto != 0 {
		ex = append(ex, nfprotoIs(c.NFProto)...)
	}
	if c.L4Proto != 0 {
		ex = append(ex, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{c.L4Proto}))
	}
	ex = append(ex, loadExpr(c.Load))
	f := frag{text: c.Text}
	switch {
	case c.Set != nil && c.Set.Name == "":
		f.anon = fromPolicySet(c.Set)
		ex = append(ex, lookup(""))
	case c.Set != nil:
		ex = append(ex, lookup(c.Set.Name))
	case c.Last != nil:
		ex = append(ex, &expr.Range{Op: expr.CmpOpEq, Register: reg, FromData: c.Eq, ToData: c.Last})
	default:
		if c.Mask != nil {
			ex = append(ex, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: uint32(len(c.Mask)),
				Mask: c.Mask, Xor: make([]byte, len(c.Mask))})
		}
		ex = append(ex, cmpReg(expr.CmpOpEq, c.Eq))
	}
	f.exprs = ex
	return f
}

// portPair: d compares the destination port with one value and s, right
// after it, the source port (policy.Compile puts them in this order).
func portPair(d, s policy.Cond) bool {
	plain := func(c policy.Cond, off uint32) bool {
		return c.Load.Kind == policy.LoadPayload && c.Load.Base == policy.BaseTransport &&
			c.Load.Offset == off && c.Load.Len == 2 &&
			c.Set == nil && c.Last == nil && c.Mask == nil && len(c.Eq) == 2
	}
	return plain(d, 2) && plain(s, 0) && d.L4Proto == s.L4Proto && d.NFProto == s.NFProto
}

// portsFrag compares both ports of portPair at once: a 4-byte load of the
// transport header's first word and one comparison with source . dest.
// nft -f merges the two comparisons so (payload_try_merge), and lists
// the merged load by offset: `tcp sport 2222 tcp dport 22`, or without a
// protocol the raw `@th,0,32 0x8ae0016`. Two loads would list as written
// and come back from the listing merged, listed differently; merged they
// also cost a packet one load and comparison less.
func portsFrag(d, s policy.Cond) frag {
	var ex []expr.Any
	if d.NFProto != 0 {
		ex = append(ex, nfprotoIs(d.NFProto)...)
	}
	if d.L4Proto != 0 {
		ex = append(ex, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{d.L4Proto}))
	}
	val := append(slices.Clone(s.Eq), d.Eq...)
	ex = append(ex, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 4},
		cmpReg(expr.CmpOpEq, val))
	text := s.Text + " " + d.Text
	if d.L4Proto == 0 {
		text = fmt.Sprintf("@th,0,32 %#x", binary.BigEndian.Uint32(val))
	}
	return frag{text: text, exprs: ex}
}

// setTypes maps policy set types to nftables' datatypes.
var setTypes = map[policy.SetType]nftables.SetDatatype{
	policy.TypeIPv4:        nftables.TypeIPAddr,
	policy.TypeIPv6:        nftables.TypeIP6Addr,
	policy.TypeInetService: nftables.TypeInetService,
	policy.TypeUID:         nftables.TypeUID,
	policy.TypeGID:         nftables.TypeGID,
	policy.TypeIfname:      nftables.TypeIFName,
	policy.TypeCgroupV2:    nftables.TypeCGroupV2,
	policy.TypeInetProto:   nftables.TypeInetProto,
}

// fromPolicySet is a policy set as this package builds sets.
func fromPolicySet(ps *policy.Set) *set {
	s := &set{name: ps.Name, anonymous: ps.Name == "", key: setTypes[ps.Type], typeText: ps.Type.Name(),
		interval: ps.Interval, native: ps.Type.Native(), learned: ps.Learned, keep: ps.Learned}
	for _, e := range ps.Elems {
		s.elems = append(s.elems, element{key: e.Key, end: e.End, interv: ps.Interval, text: e.Text})
	}
	return s
}

// snatTo is `snat ip|ip6 to <addr>`: one address, ports kept where they
// are free.
func snatTo(f inet.Family, a netip.Addr) frag {
	word := "snat ip to "
	if f == inet.IPv6 {
		word = "snat ip6 to "
	}
	return frag{text: word + a.String(), exprs: []expr.Any{
		&expr.Immediate{Register: reg, Data: a.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.NFProto()), RegAddrMin: reg, RegAddrMax: reg},
	}}
}
