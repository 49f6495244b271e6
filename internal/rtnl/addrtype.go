package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/core"
)

// AddrType asks the kernel of the caller's network namespace the type of
// dst as nftables' `fib daddr type` (no iif or oif: the table's
// prerouting and output returns) reads it: one route lookup
// (RTM_GETROUTE, `ip route get`), so that the answer is the kernel's
// tables now, whatever interface holds the address, at the cost of one
// netlink round trip. Addresses whose type AddrTypeOf settles, and IPv6
// link-local ones (which the chains return on by their prefix, and which
// a lookup without an interface cannot answer), are not asked.
func AddrType(dst netip.Addr) (core.AddrType, error) {
	dst = dst.Unmap()
	if t := core.AddrTypeOf(dst); t != core.AddrUnicast || dst.IsLinkLocalUnicast() {
		return t, nil
	}
	family, bits := unix.AF_INET, uint8(32)
	if dst.Is6() {
		family, bits = unix.AF_INET6, 128
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_REQUEST)
	// RTM_F_LOOKUP_TABLE: the answer names the table the lookup took
	// the route from, not RT_TABLE_MAIN.
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(family), Dst_len: bits, Flags: unix.RTM_F_LOOKUP_TABLE}})
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.AsSlice()))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			if t, ok := lookupFailed(dst, errno); ok {
				return t, nil
			}
		}
		return 0, fmt.Errorf("asking the kernel the type of %s: %w", dst, err)
	}
	if len(msgs) == 0 {
		return 0, fmt.Errorf("asking the kernel the type of %s: no answer", dst)
	}
	rt := nl.DeserializeRtMsg(msgs[0])
	table := uint32(rt.Table)
	attrs, err := nl.ParseRouteAttr(msgs[0][rt.Len():])
	if err != nil {
		return 0, fmt.Errorf("reading the kernel's route to %s: %w", dst, err)
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.RTA_TABLE && len(a.Value) == 4 {
			table = binary.NativeEndian.Uint32(a.Value)
		}
	}
	return fibType(dst, rt.Type, table), nil
}

// fibType is `fib daddr type` from a route lookup's answer: its route's
// type and the table it came from.
//
// IPv4 (nft_fib4_eval_type, inet_dev_addr_type) looks in the local table
// alone: a route found there (local, broadcast) gives its type, and an
// address it does not hold is unicast whatever other tables say (a
// `local` route in a table of its own, as TPROXY setups add, is not
// local to the fib expression). An ordinary lookup reaches the local
// table first, through the rule the kernel puts at preference 0.
//
// IPv6 (__nft_fib6_eval_type) takes the whole lookup: local for a local
// route from any table, anycast for an anycast one, and else the
// address's own type (multicast was settled before asking).
func fibType(dst netip.Addr, rtmType uint8, table uint32) core.AddrType {
	t := core.AddrType(rtmType)
	if dst.Is4() {
		if table != unix.RT_TABLE_LOCAL || (t != core.AddrLocal && t != core.AddrBroadcast) {
			return core.AddrUnicast
		}
		return t
	}
	if t == core.AddrLocal || t == core.AddrAnycast {
		return t
	}
	return core.AddrUnicast
}

// lookupFailed is the type of an address the kernel's lookup refuses:
// for IPv4 no route means not in the local table, unicast; for IPv6 the
// fib expression answers the failure's own type (unreachable, blackhole,
// prohibit), none of which the chains return on.
func lookupFailed(dst netip.Addr, errno unix.Errno) (core.AddrType, bool) {
	switch errno {
	case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EACCES, unix.EINVAL:
	default:
		return 0, false
	}
	if dst.Is4() {
		return core.AddrUnicast, true
	}
	return core.AddrUnreachable, true
}
