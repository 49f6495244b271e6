package desired

import (
	"net/netip"
	"reflect"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// NFT is the complete desired content of wanpin's nftables table. It
// says what, never how: which uplinks exist and carry which mark, which
// policies match what and which uplinks may carry their connections. The
// chain layout is pkg/rules' business (pkg/rules/layout.md); what the
// layout does to a new connection is what core.Explain evaluates.
type NFT struct {
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
	// Evict is the ct mark of TCP connections that failback moves off
	// their uplink (0: no uplink moves its connections): the next packet
	// of such a connection resets it.
	Evict uint32
	// MPTCP: the router's MPTCP subflows (their SYN carries MP_JOIN)
	// leave by their source address, never marked by a policy.
	MPTCP bool
	// DNSHold: DNS answers arriving from the uplinks are held for the
	// daemon's learner (some policy has domains); 0: none are.
	DNSHold DNSHold
	// RejectMark: the packet mark (inside Mask, no uplink's) a policy's
	// reject gives a new connection, which is then refused only where the
	// routing sends it out of an uplink: the main table's routes to a LAN
	// or a VPN still take it. 0: refused outright in prerouting or
	// output (the mask has no value to spare).
	RejectMark uint32
}

// DNSHold is the NFLOG group DNS answers are held in (0: none held),
// and the mark (inside Mask) the learner's re-injected answers carry,
// which the hold rules let through.
type DNSHold struct {
	Group uint16
	Mark  uint32
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
	// NAT6Prefix: NFT.LANPrefix6 is mapped 1:1 onto Prefix6 on the way
	// out, and Prefix6 back onto the LAN prefix on the way in; anything
	// else leaving here is masqueraded.
	NAT6Prefix NAT6 = "prefix"
)

// Uplink is one WAN link as nftables sees it.
type Uplink struct {
	Name      string // short, [a-z0-9_-], at most 15 characters
	Interface string // matched by name (oifname/iifname), so it may not exist yet
	Mark      uint32 // non-zero, inside NFT.Mask
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
	// still translated, or ISPs would drop them.
	Addrs []netip.Addr
	// NAT, per family: the address source NAT translates to (snat, not
	// masquerade: see layout.md); invalid while unknown, and then
	// masquerade stands in.
	NAT inet.PerFamily[netip.Addr]
	// NoGateway: the interface has addresses but no way to a gateway in
	// either family (not point-to-point, none configured, leased or in
	// the main table). Connections arriving on it are then not pinned to
	// the uplink, nor is what leaves it guarded: a LAN interface named as
	// an uplink by mistake would otherwise pin the whole LAN to a down
	// uplink and drop the replies of every connection pinned elsewhere. A
	// real uplink loses nothing: without a gateway it carries nothing
	// from or to the internet.
	NoGateway bool
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

// Balancer chooses the uplink of a new connection, per family: an uplink
// may be up (or healthy) in one family only.
type Balancer struct {
	V4, V6 Choice
	// Sticky: a source that had a connection within Sticky.Timeout gets
	// the uplink that one got, while that uplink is still a candidate.
	Sticky Sticky
}

// Sticky is a balancer's memory of the uplink each source (or source and
// destination) was given. The zero Sticky remembers nothing.
type Sticky struct {
	// Timeout: how long after its last new connection a source keeps its
	// uplink; 0 means not sticky.
	Timeout time.Duration
	// ByDestination keys the memory by source and destination, so a
	// source's connections spread over sites but stay put per site.
	ByDestination bool
}

// On reports whether the balancer remembers its choices.
func (s Sticky) On() bool { return s.Timeout > 0 }

// Both is a balancer that chooses the same in both families.
func Both(c Choice) Balancer { return Balancer{V4: c, V6: c} }

// For returns the choice for one family.
func (b Balancer) For(f inet.Family) Choice {
	if f == inet.IPv6 {
		return b.V6
	}
	return b.V4
}

// Same reports whether both families choose alike.
func (b Balancer) Same() bool { return reflect.DeepEqual(b.V4, b.V6) }

// Policy routes matching new connections to chosen uplinks.
type Policy struct {
	Name     string // [a-z0-9_-], at most 31 characters
	Match    policy.Match
	Balancer Balancer
}
