package rules

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

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

// maxKey is the largest key of width bytes (2, 4 or 16).
func maxKey(width int) u128 {
	switch width {
	case 16:
		return u128{^uint64(0), ^uint64(0)}
	default:
		return u128{0, 1<<(8*width) - 1}
	}
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

// prefixIntervals splits prefixes by family and merges each family into
// disjoint ranges.
func prefixIntervals(ps []netip.Prefix) (v4, v6 []interval) {
	for _, p := range ps {
		p = p.Masked()
		width := 16
		if p.Addr().Is4() {
			width = 4
		}
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
		last := u128{first.hi | span.hi, first.lo | span.lo}
		if width == 4 {
			v4 = append(v4, interval{first, last})
		} else {
			v6 = append(v6, interval{first, last})
		}
	}
	return mergeIntervals(v4, 4), mergeIntervals(v6, 16)
}

func portIntervals(rs []PortRange) []interval {
	in := make([]interval, 0, len(rs))
	for _, r := range rs {
		in = append(in, interval{u128{0, uint64(r.First)}, u128{0, uint64(r.Last)}})
	}
	return mergeIntervals(in, 2)
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
