package core

import (
	"fmt"
	"net/netip"
)

// AddrType is the kernel's type of an address, what nftables' `fib daddr
// type` reads: rtnetlink's route types (RTN_*), with their numbers.
type AddrType uint8

const (
	AddrUnicast     AddrType = 1 // RTN_UNICAST: routed
	AddrLocal       AddrType = 2 // RTN_LOCAL: an address of the router's, on any interface
	AddrBroadcast   AddrType = 3 // RTN_BROADCAST: a subnet's broadcast address, 255.255.255.255, 0.0.0.0/8
	AddrAnycast     AddrType = 4 // RTN_ANYCAST: an IPv6 subnet-router anycast address (routed, to the chains)
	AddrMulticast   AddrType = 5 // RTN_MULTICAST
	AddrUnreachable AddrType = 7 // RTN_UNREACHABLE: IPv6, no route (routed, to the chains: no return matches it)
)

func (t AddrType) String() string {
	switch t {
	case AddrUnicast:
		return "unicast"
	case AddrLocal:
		return "local"
	case AddrBroadcast:
		return "broadcast"
	case AddrAnycast:
		return "anycast"
	case AddrMulticast:
		return "multicast"
	case AddrUnreachable:
		return "unreachable"
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// AddrTypes answers the kernel's type of a destination now: the router's
// local table (its addresses on every interface, each subnet's
// broadcast), which only the kernel knows. It is asked only about
// addresses whose type AddrTypeOf does not settle.
type AddrTypes func(netip.Addr) AddrType

// AddrTypeOf is the type an address has by itself, before any table: the
// kernel's own checks ahead of its lookup (inet_dev_addr_type: 0.0.0.0/8
// and 255.255.255.255 are broadcast, 224.0.0.0/4 multicast; for IPv6,
// ipv6_addr_type: ff00::/8 multicast). Anything else is unicast until
// the kernel's tables say otherwise.
func AddrTypeOf(a netip.Addr) AddrType {
	a = a.Unmap()
	switch {
	case a.Is4() && (a.As4()[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return AddrBroadcast
	case a.IsMulticast():
		return AddrMulticast
	}
	return AddrUnicast
}
