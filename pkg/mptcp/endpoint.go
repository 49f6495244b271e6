package mptcp

import (
	"fmt"
	"net/netip"
	"strings"
)

// Flags are an endpoint's MPTCP_PM_ADDR_FLAG_* bits.
type Flags uint32

const (
	// Signal: announce the address to the peer (ADD_ADDR), for a server
	// the peer should open subflows to.
	Signal Flags = 1 << 0
	// Subflow: open a subflow from this address to the peer, what a
	// client (the router's own connections) needs.
	Subflow Flags = 1 << 1
	// Backup: subflows from this address carry data only when no
	// non-backup subflow can (MP_PRIO).
	Backup Flags = 1 << 2
	// Fullmesh: one subflow from this address to every address the peer
	// announced, not just one.
	Fullmesh Flags = 1 << 3
)

// implicit (MPTCP_PM_ADDR_FLAG_IMPLICIT) marks an endpoint the kernel
// made itself for the local address of a subflow that no endpoint
// covered (not seen in these tests); named when shown, never set.
const implicit Flags = 1 << 4

// changeable are the flags SET_FLAGS can change on an existing endpoint:
// the kernel applies only these bits and ignores the others, so a change
// of Subflow or Signal needs the endpoint deleted and added again.
const changeable = Backup | Fullmesh

var flagNames = []struct {
	f    Flags
	name string
}{{Signal, "signal"}, {Subflow, "subflow"}, {Backup, "backup"}, {Fullmesh, "fullmesh"}, {implicit, "implicit"}}

// String spells the flags as ip mptcp does: "subflow backup".
func (f Flags) String() string {
	var s []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			s = append(s, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		s = append(s, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(s, " ")
}

// Endpoint is one address of the in-kernel path manager.
type Endpoint struct {
	ID      uint8
	Addr    netip.Addr
	Ifindex int // 0: none
	Flags   Flags
}

// String reads as a line of ip mptcp endpoint show.
func (e Endpoint) String() string {
	s := fmt.Sprintf("%s id %d", e.Addr, e.ID)
	if e.Flags != 0 {
		s += " " + e.Flags.String()
	}
	if e.Ifindex != 0 {
		s += fmt.Sprintf(" ifindex %d", e.Ifindex)
	}
	return s
}

// Limits are the per-connection limits of the in-kernel path manager.
type Limits struct {
	// Subflows is the number of additional subflows a connection may
	// open or accept (beyond the first).
	Subflows uint32
	// AddAddrAccepted is the number of addresses announced by the peer
	// (ADD_ADDR) that a connection uses to open subflows to.
	AddAddrAccepted uint32
}
