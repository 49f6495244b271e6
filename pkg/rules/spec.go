// Package rules turns a Spec (what wanpin wants nftables to do) into one
// nftables table of wanpin's own, applied in a single atomic transaction,
// and renders the same table as the text `nft list table` prints.
//
// The Spec says what, never how: which uplinks exist and carry which mark,
// which policies match what and which uplinks may carry their connections.
// The chain layout is this package's business and is documented in layout.md
// next to this file.
package rules

import "net/netip"

// Spec is the complete desired content of wanpin's nftables table.
// It is a pure value: building it touches no kernel state.
type Spec struct {
	// Table is the name of the inet table ("wanpin").
	Table string
	// Mask is the set of fwmark / ct mark bits wanpin owns. Every mark
	// operation is masked with it; bits outside it are never changed.
	Mask uint32
	// Uplinks in a stable order (by Mark).
	Uplinks []Uplink
	// Policies in evaluation order: the first match wins.
	Policies []Policy
	// Default balances new connections that match no policy.
	Default Balancer
}

// Uplink is one WAN link as nftables sees it.
type Uplink struct {
	Name      string // short, [a-z0-9_-], at most 15 characters
	Interface string // matched by name (oifname/iifname), so it may not exist yet
	Mark      uint32 // non-zero, inside Spec.Mask
	// Up: the uplink may carry traffic. When false, packets of connections
	// pinned to it are dropped (until their conntrack entries are flushed)
	// rather than leaking out another uplink with the wrong source address.
	Up bool
	// Masquerade: source-NAT everything that leaves through the interface.
	Masquerade bool
	// Addrs are the uplink's current addresses. When Masquerade is false,
	// packets leaving through this uplink with the address of another
	// uplink as source (the router's own traffic re-routed by a mark) are
	// still masqueraded, or ISPs would drop them.
	Addrs []netip.Addr
}

// Bucket is one candidate of a balancer with its share.
type Bucket struct {
	Mark   uint32 // the uplink's mark
	Weight int    // >= 1
}

// Balancer chooses the uplink of a new connection.
type Balancer struct {
	// Buckets: weighted random choice among these uplinks (all up, best
	// tier). Empty means the balancer has nobody to choose.
	Buckets []Bucket
	// When Buckets is empty: Reject refuses the connection (policy with
	// fallback "none"); otherwise FallbackDefault hands it to the default
	// balancer; otherwise the connection stays unmarked (main table).
	Reject          bool
	FallbackDefault bool
}

// PortRange is an inclusive destination port range.
type PortRange struct{ First, Last uint16 }

// CgroupMatch is one systemd unit or cgroup v2 path, resolved: the cgroup
// id (inode number of the cgroup directory) and its depth in the hierarchy
// (what `socket cgroupv2 level N` compares against).
type CgroupMatch struct {
	Level int
	ID    uint64
}

// Policy routes matching new connections to chosen uplinks. Every non-empty
// matcher must match (AND); inside one matcher any element may match (OR).
type Policy struct {
	Name string // [a-z0-9_-], at most 31 characters

	// Only the router's own traffic (output hook) can match these.
	UIDs    []uint32
	GIDs    []uint32
	Cgroups []CgroupMatch
	// ServicesUnresolved: the policy names services but none of them
	// resolved to a cgroup right now (unit not running). The policy then
	// matches nothing instead of matching everything.
	ServicesUnresolved bool

	// Only forwarded traffic (prerouting hook) can match these.
	Sources      []netip.Prefix // both families mixed
	InInterfaces []string

	// Both.
	Destinations []netip.Prefix // both families mixed
	Protocol     uint8          // 0 any, 6 tcp, 17 udp
	Ports        []PortRange    // destination ports; needs a protocol with ports

	Balancer Balancer
}

// LocalOnly reports whether only the router's own traffic can match p.
func (p Policy) LocalOnly() bool {
	return len(p.UIDs) > 0 || len(p.GIDs) > 0 || len(p.Cgroups) > 0 || p.ServicesUnresolved
}

// ForwardOnly reports whether only forwarded traffic can match p.
func (p Policy) ForwardOnly() bool {
	return len(p.Sources) > 0 || len(p.InInterfaces) > 0
}
