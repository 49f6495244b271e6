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
	// Source6: IPv6 source prefixes that choose their uplink (nat6 none):
	// a new connection that no policy sent elsewhere leaves by the uplink
	// whose prefix its source address is in, before any balancing. Only
	// uplinks whose IPv6 is usable are listed.
	Source6 []SourcePrefix
	// LANPrefix6 is what uplinks with NAT6Prefix translate from.
	LANPrefix6 netip.Prefix
}

// SourcePrefix ties a source prefix to the uplink (by mark) that routes it.
type SourcePrefix struct {
	Prefix netip.Prefix
	Mark   uint32
}

// NAT6 is how LAN IPv6 traffic leaves an uplink.
type NAT6 string

const (
	// NAT6Masquerade: as IPv4, the uplink's own address.
	NAT6Masquerade NAT6 = "masquerade"
	// NAT6None: addresses of the uplink's Prefix6 leave untranslated;
	// anything else leaving here is masqueraded (or the ISP would drop it).
	NAT6None NAT6 = "none"
	// NAT6Prefix: Spec.LANPrefix6 is mapped 1:1 onto Prefix6 on the way
	// out, and Prefix6 back onto the LAN prefix on the way in; anything
	// else leaving here is masqueraded.
	NAT6Prefix NAT6 = "prefix"
)

// Uplink is one WAN link as nftables sees it.
type Uplink struct {
	Name      string // short, [a-z0-9_-], at most 15 characters
	Interface string // matched by name (oifname/iifname), so it may not exist yet
	Mark      uint32 // non-zero, inside Spec.Mask
	// Masquerade: source-NAT the IPv4 traffic that leaves through the
	// interface.
	Masquerade bool
	// NAT6 and Prefix6: what happens to IPv6 traffic leaving through the
	// interface. The zero NAT6 means NAT6Masquerade.
	NAT6    NAT6
	Prefix6 netip.Prefix
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

// Choice is how a balancer picks an uplink for one address family.
type Choice struct {
	// Buckets: weighted random choice among these uplinks (all up, best
	// tier). Empty means the balancer has nobody to choose.
	Buckets []Bucket
	// When Buckets is empty: Reject refuses the connection (policy with
	// fallback "none"); otherwise FallbackDefault hands it to the default
	// balancer; otherwise the connection stays unmarked (main table).
	Reject          bool
	FallbackDefault bool
}

// Balancer chooses the uplink of a new connection: its Choice holds for
// IPv4, and for IPv6 too unless V6 is set. V6 is set when the families
// differ, because an uplink is up (or healthy) in one family only.
type Balancer struct {
	Choice
	V6 *Choice
}

// For returns the choice for one family.
func (b Balancer) For(v6 bool) Choice {
	if v6 && b.V6 != nil {
		return *b.V6
	}
	return b.Choice
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
