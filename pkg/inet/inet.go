// Package inet names the two Internet address families. Everything in
// wanpin that differs between IPv4 and IPv6 takes a Family, never a bool:
// `addrPayload(inet.IPv4, src)` reads at the call site, `addrPayload(true,
// true)` does not.
package inet

import "net/netip"

// Family is IPv4 or IPv6. The zero value is no family: a forgotten
// field shows up as "family(0)", not as a silent IPv4.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Families lists both, in the order wanpin handles them.
var Families = [...]Family{IPv4, IPv6}

// Of returns the family of an address; an IPv4-mapped IPv6 address is
// IPv4 (that is how the kernel routes it). Invalid addresses have none.
func Of(a netip.Addr) Family {
	switch {
	case !a.IsValid():
		return 0
	case a.Is4() || a.Is4In6():
		return IPv4
	}
	return IPv6
}

// OfPrefix returns the family of a prefix.
func OfPrefix(p netip.Prefix) Family { return Of(p.Addr()) }

// String is "IPv4" or "IPv6", as people write it.
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "family(" + string('0'+byte(f%10)) + ")"
}

// Label is "ipv4" or "ipv6": metrics labels, JSON keys, nft's nfproto names.
func (f Family) Label() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return f.String()
}

// Index is 0 for IPv4 and 1 for IPv6, for arrays indexed by family.
func (f Family) Index() int {
	if f == IPv6 {
		return 1
	}
	return 0
}

// Other is the other family.
func (f Family) Other() Family {
	if f == IPv6 {
		return IPv4
	}
	return IPv6
}

// Bits is the address length: 32 or 128.
func (f Family) Bits() int {
	if f == IPv6 {
		return 128
	}
	return 32
}

// Bytes is the address length in bytes: 4 or 16.
func (f Family) Bytes() int { return f.Bits() / 8 }

// Unspecified is 0.0.0.0 or ::.
func (f Family) Unspecified() netip.Addr {
	if f == IPv6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// Default is the default route's destination: 0.0.0.0/0 or ::/0.
func (f Family) Default() netip.Prefix { return netip.PrefixFrom(f.Unspecified(), 0) }

// AF is the kernel's address family number (AF_INET 2, AF_INET6 10),
// which netlink routes and rules carry.
func (f Family) AF() int {
	if f == IPv6 {
		return 10
	}
	return 2
}

// NFProto is netfilter's family number (NFPROTO_IPV4 2, NFPROTO_IPV6
// 10), what `meta nfproto` compares and conntrack filters on.
func (f Family) NFProto() uint8 { return uint8(f.AF()) }

// FromAF is the inverse of AF; 0 for anything else.
func FromAF(af int) Family {
	switch af {
	case 2:
		return IPv4
	case 10:
		return IPv6
	}
	return 0
}

// PerFamily holds one value per family.
type PerFamily[T any] [2]T

// Of returns the value of one family.
func (p *PerFamily[T]) Of(f Family) *T { return &p[f.Index()] }

// Get returns the value of one family.
func (p PerFamily[T]) Get(f Family) T { return p[f.Index()] }
