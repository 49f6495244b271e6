package desired

import "net/netip"

// MPTCP is the kernel's MPTCP path manager as wanpin wants it: with
// Enabled, one endpoint per address of every uplink that takes part
// (in the uplinks' order), and limits for that many; without, none of
// wanpin's.
type MPTCP struct {
	Enabled   bool
	Endpoints []MPTCPEndpoint
	// Uplinks is how many uplinks take part: the limits let a
	// connection have a subflow through each.
	Uplinks int
}

// MPTCPEndpoint is one address the kernel opens subflows from. Each
// subflow routes by its source address (the uplink's `ip rule from
// ADDR`), never by a mark.
type MPTCPEndpoint struct {
	Uplink    string
	Interface string // the subflows are bound to it (the endpoint's dev)
	Addr      netip.Addr
	// Backup: the uplink is of a worse tier than the best one up; its
	// subflows carry data only while no other can (MP_PRIO).
	Backup bool
}
