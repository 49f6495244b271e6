// Package core holds wanpin's decisions, and nothing else: what an
// interface's state means for an uplink (Observe), what the kernel should
// hold for a configuration and the uplinks' states (Build), where a new
// connection goes (Explain), and the step function that turns one input
// (an interface snapshot, a health verdict, a maintenance call, a reload,
// a timer) into the next state and an ordered list of effects (Step).
//
// It is pure: no kernel library, no I/O, no clock. pkg/daemon is the thin
// executor that feeds it inputs from the kernel and carries its effects
// out; one goroutine there owns every change.
package core

import (
	"net/netip"

	"github.com/wanpin/wanpin/pkg/inet"
)

// Addr is one address of an interface.
type Addr struct {
	Prefix netip.Prefix // the local address with its prefix length
	Peer   netip.Addr   // the far end of a point-to-point address (PPP), if any
	// Secondary: an IPv4 alias, or an IPv6 temporary (privacy) address;
	// Deprecated: past its preferred lifetime. Neither is the address the
	// uplink's traffic is translated to.
	Secondary, Deprecated bool
}

// Link is what wanpin needs to know of one interface, as pkg/watch reads
// it from the kernel.
type Link struct {
	Name         string
	Index        int
	Exists       bool
	AdminUp      bool // IFF_UP
	Carrier      bool // IFF_LOWER_UP: the link layer is up
	PointToPoint bool // IFF_POINTOPOINT (PPP, some LTE modems)
	Addrs        []Addr
	// Gateway, per family: the main table's default route through this
	// interface, as a DHCP client or router advertisements left it.
	Gateway inet.PerFamily[netip.Addr]
	// DefaultDev, per family: the main table has a default route through
	// this interface without a gateway (`default dev ppp0`).
	DefaultDev inet.PerFamily[bool]
}
