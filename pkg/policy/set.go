package policy

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/wanpin/wanpin/pkg/inet"
)

// SetType is the key type of a set, as nftables names it.
type SetType uint8

const (
	TypeIPv4 SetType = iota + 1
	TypeIPv6
	TypeInetService
	TypeUID
	TypeGID
	TypeIfname
	TypeCgroupV2
	TypeInetProto
)

// Name is the type's name in `nft list` ("ipv4_addr").
func (t SetType) Name() string {
	switch t {
	case TypeIPv4:
		return "ipv4_addr"
	case TypeIPv6:
		return "ipv6_addr"
	case TypeInetService:
		return "inet_service"
	case TypeUID:
		return "uid"
	case TypeGID:
		return "gid"
	case TypeIfname:
		return "ifname"
	case TypeCgroupV2:
		return "cgroupsv2"
	case TypeInetProto:
		return "inet_proto"
	}
	return fmt.Sprintf("type(%d)", t)
}

// Native reports whether keys of the type are in host byte order (the
// kernel loads uids, gids and cgroup ids as host integers; ifnames are
// strings nft treats as host order). Others are in network order.
func (t SetType) Native() bool {
	switch t {
	case TypeUID, TypeGID, TypeIfname, TypeCgroupV2:
		return true
	}
	return false
}

// Width is the key's size in bytes.
func (t SetType) Width() int {
	switch t {
	case TypeIPv4, TypeUID, TypeGID:
		return 4
	case TypeIPv6, TypeIfname:
		return 16
	case TypeInetService:
		return 2
	case TypeCgroupV2:
		return 8
	case TypeInetProto:
		return 1
	}
	return 0
}

// Set is a set of keys a condition looks up: named (`p_<policy>_<what>`,
// listed in the table) or anonymous (`{ tcp, udp }` inside the rule).
type Set struct {
	Name     string // "" for an anonymous set
	Type     SetType
	Interval bool
	Elems    []Elem
	// Learned: the elements are added at run time (addresses learned
	// from DNS answers, each with its own timeout), never from the
	// policy file: Elems is empty, and Cond.Matches asks Flow.Learned.
	Learned bool
}

// Elem is one element: a key, or for interval sets a range from Key to
// End (exclusive; nil when the range runs to the top of the key space,
// which the kernel cannot store an end for).
type Elem struct {
	Key  []byte
	End  []byte
	Text string // as nft lists it
}

// Contains reports whether key is in the set, as the kernel's lookup
// decides: byte-wise order for intervals (keys in network order), exact
// equality otherwise.
func (s *Set) Contains(key []byte) bool {
	for _, e := range s.Elems {
		if !s.Interval {
			if bytes.Equal(e.Key, key) {
				return true
			}
			continue
		}
		if bytes.Compare(e.Key, key) <= 0 && (e.End == nil || bytes.Compare(key, e.End) < 0) {
			return true
		}
	}
	return false
}

// InlineText is the `{ a, b }` form nft prints for an anonymous set.
func (s *Set) InlineText() string {
	t := make([]string, len(s.Elems))
	for i, e := range s.Elems {
		t[i] = e.Text
	}
	return "{ " + strings.Join(t, ", ") + " }"
}

// hostLittleEndian: nft sorts host-order keys by their numeric value, which
// for a little-endian string key (ifname) means comparing from the last
// byte.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// KeyCmp orders elements as nft 1.0.6 lists them: by the key's value as an
// integer in the set's byte order.
func KeyCmp(native bool) func(a, b Elem) int {
	return func(a, b Elem) int {
		if native && hostLittleEndian {
			for i := len(a.Key) - 1; i >= 0; i-- {
				if a.Key[i] != b.Key[i] {
					return int(a.Key[i]) - int(b.Key[i])
				}
			}
			return 0
		}
		return bytes.Compare(a.Key, b.Key)
	}
}

// Sort orders the elements as nft lists them.
func (s *Set) Sort() { slices.SortStableFunc(s.Elems, KeyCmp(s.Type.Native())) }

// Native32 is v as a host-order 4-byte key (marks, uids, gids).
func Native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// Native64 is v as a host-order 8-byte key (cgroup ids).
func Native64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

// IfnameSize is IFNAMSIZ: the kernel loads interface names as 16 bytes.
const IfnameSize = 16

// IfnameKey is an interface name as the kernel loads it: NUL-padded.
func IfnameKey(n string) []byte {
	b := make([]byte, IfnameSize)
	copy(b, n)
	return b
}

// u128 is an unsigned 128-bit integer, enough for an IPv6 address. IPv4
// addresses and ports use only the low word.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) addOne() u128 {
	lo, carry := bits.Add64(a.lo, 1, 0)
	return u128{a.hi + carry, lo}
}

func (a u128) sub(b u128) u128 {
	lo, borrow := bits.Sub64(a.lo, b.lo, 0)
	return u128{a.hi - b.hi - borrow, lo}
}

func (a u128) and(b u128) u128 { return u128{a.hi & b.hi, a.lo & b.lo} }
func (a u128) isZero() bool    { return a.hi == 0 && a.lo == 0 }

// trailingOnes is the length of the run of ones starting at bit 0;
// onesCount the number of set bits. Equal means a 2^n-1 span.
func (a u128) trailingOnes() int {
	if a.lo == ^uint64(0) {
		return 64 + bits.TrailingZeros64(^a.hi)
	}
	return bits.TrailingZeros64(^a.lo)
}

func (a u128) onesCount() int { return bits.OnesCount64(a.hi) + bits.OnesCount64(a.lo) }

// interval is an inclusive range of keys of one width (4 bytes for IPv4,
// 16 for IPv6, 2 for ports).
type interval struct{ first, last u128 }

// maxKey is the largest key of width bytes (1, 2, 4 or 16).
func maxKey(width int) u128 {
	if width == 16 {
		return u128{^uint64(0), ^uint64(0)}
	}
	return u128{0, 1<<(8*width) - 1}
}

// bytesOf renders v as a big-endian key of width bytes (network order, as
// the payload expression loads addresses and ports).
func bytesOf(v u128, width int) []byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return slices.Clone(b[16-width:])
}

func addrToU128(a netip.Addr) u128 {
	b := a.As16()
	if a.Is4() {
		return u128{0, uint64(binary.BigEndian.Uint32(b[12:]))}
	}
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func u128ToAddr(v u128, width int) netip.Addr {
	if width == 4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

// mergeIntervals sorts the intervals and merges overlapping and adjacent
// ones, so the result is disjoint and minimal. The kernel's interval sets
// reject overlapping elements, and nft lists merged ranges anyway.
func mergeIntervals(in []interval, width int) []interval {
	if len(in) == 0 {
		return nil
	}
	s := slices.Clone(in)
	slices.SortFunc(s, func(a, b interval) int {
		if c := a.first.cmp(b.first); c != 0 {
			return c
		}
		return a.last.cmp(b.last)
	})
	top := maxKey(width)
	out := []interval{s[0]}
	for _, iv := range s[1:] {
		cur := &out[len(out)-1]
		// Adjacent (cur.last+1 == iv.first) or overlapping: extend.
		if cur.last == top || iv.first.cmp(cur.last.addOne()) <= 0 {
			if iv.last.cmp(cur.last) > 0 {
				cur.last = iv.last
			}
			continue
		}
		out = append(out, iv)
	}
	return out
}

// prefixIntervals merges the prefixes of one family into disjoint ranges.
func prefixIntervals(ps []netip.Prefix, f inet.Family) []interval {
	var out []interval
	width := f.Bytes()
	for _, p := range ps {
		if inet.OfPrefix(p) != f {
			continue
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-(p.Addr().BitLen()-8*width)).Masked()
		first := addrToU128(p.Addr())
		hostBits := 8*width - p.Bits()
		var span u128 // 2^hostBits - 1
		switch {
		case hostBits >= 128:
			span = maxKey(16)
		case hostBits >= 64:
			span = u128{1<<(hostBits-64) - 1, ^uint64(0)}
		default:
			span = u128{0, 1<<hostBits - 1}
		}
		out = append(out, interval{first, u128{first.hi | span.hi, first.lo | span.lo}})
	}
	return mergeIntervals(out, width)
}

// intervalElems turns disjoint ranges into elements.
func intervalElems(ivs []interval, width int, text func(interval) string) []Elem {
	out := make([]Elem, 0, len(ivs))
	for _, iv := range ivs {
		e := Elem{Key: bytesOf(iv.first, width), Text: text(iv)}
		// The kernel stores an interval as its start and the first key
		// past it, flagged as an end. A range up to the largest key has no
		// such key: it is left open, and nft lists it up to the top.
		if iv.last != maxKey(width) {
			e.End = bytesOf(iv.last.addOne(), width)
		}
		out = append(out, e)
	}
	return out
}

// PrefixElems is the interval elements of the prefixes of one family,
// merged, as an address set of that family holds them.
func PrefixElems(ps []netip.Prefix, f inet.Family) []Elem {
	w := f.Bytes()
	return intervalElems(prefixIntervals(ps, f), w, func(iv interval) string { return addrIntervalText(iv, w) })
}

// PrefixSet is an interval set of the prefixes of one family.
func PrefixSet(name string, ps []netip.Prefix, f inet.Family) *Set {
	s := intervalSet(prefixIntervals(ps, f), f)
	s.Name = name
	return s
}

// intervalSet is the interval set of merged address ranges of family f.
// addrSetType is the set type of family f's addresses.
func addrSetType(f inet.Family) SetType {
	if f == inet.IPv6 {
		return TypeIPv6
	}
	return TypeIPv4
}

func intervalSet(ivs []interval, f inet.Family) *Set {
	t := addrSetType(f)
	w := f.Bytes()
	return &Set{Type: t, Interval: true, Elems: intervalElems(ivs, w, func(iv interval) string { return addrIntervalText(iv, w) })}
}

func portElems(rs []PortRange) []Elem {
	in := make([]interval, 0, len(rs))
	for _, r := range rs {
		in = append(in, interval{u128{0, uint64(r.First)}, u128{0, uint64(r.Last)}})
	}
	return intervalElems(mergeIntervals(in, 2), 2, portIntervalText)
}

// addrIntervalText prints a range the way nft lists an address interval
// set: a single address, a prefix when the range is exactly one, else
// first-last.
func addrIntervalText(iv interval, width int) string {
	first := u128ToAddr(iv.first, width)
	if iv.first == iv.last {
		return first.String()
	}
	span := iv.last.sub(iv.first)
	if span.trailingOnes() == span.onesCount() && iv.first.and(span).isZero() {
		return fmt.Sprintf("%s/%d", first, 8*width-span.onesCount())
	}
	return fmt.Sprintf("%s-%s", first, u128ToAddr(iv.last, width))
}

// portIntervalText prints a port range as nft does; nft never prints
// prefixes for inet_service.
func portIntervalText(iv interval) string {
	if iv.first == iv.last {
		return fmt.Sprint(iv.first.lo)
	}
	return fmt.Sprintf("%d-%d", iv.first.lo, iv.last.lo)
}
