// Package policy is wanpin's one semantics of a policy's match keys.
//
// A [Match] (what the admin wrote, parsed) is compiled into [Rule]s made
// of [Cond]itions: each condition says what nftables loads (a meta key, a
// payload field, the socket's cgroup) and which set or value it is looked
// up in, with the text `nft list` prints for it. pkg/rules turns the
// conditions into nftables expressions without knowing any match key;
// `wanpin explain` evaluates the same conditions on a [Flow] by loading
// the same bytes from a synthetic packet. Adding a match key therefore
// touches config (parsing) and this package (compiling), nothing else.
//
// The package is pure: no kernel library, no I/O.
package policy

import "net/netip"

// Match is one policy's match keys, as parsed from the policy file. Every
// non-empty key must match (AND); inside one key any element may match
// (OR). Empty keys match anything.
type Match struct {
	// Only the router's own traffic (output hook) can match these.
	UIDs []uint32
	GIDs []uint32
	// Services are systemd units or cgroup v2 paths as written; Cgroups
	// are what they resolved to when the state was built (a unit that is
	// not running resolves to nothing). A Match with Services but no
	// Cgroups matches nothing rather than everything.
	Services []string
	Cgroups  []CgroupMatch

	// Only forwarded traffic (prerouting hook) can match these.
	Sources      []netip.Prefix // both families mixed
	InInterfaces []string

	// Both.
	Destinations []netip.Prefix // both families mixed
	// Domains are DNS names, normalised (lower case, no trailing dot),
	// each with its subdomains: a destination matches when the daemon
	// learned it from a DNS answer for one of them. Its addresses are not
	// in the policy file: they are the elements of a Learned set, which
	// the daemon fills and the kernel expires.
	Domains     []string
	Protocol    uint8       // 0 any, 6 tcp, 17 udp
	Ports       []PortRange // destination ports; tcp and udp only
	SourcePorts []PortRange // source ports; tcp and udp only
}

// PortRange is an inclusive destination port range; First == Last for a
// single port.
type PortRange struct{ First, Last uint16 }

// CgroupMatch is one systemd unit or cgroup v2 path, resolved: the cgroup
// id (inode number of the cgroup directory) and its depth in the hierarchy
// (what `socket cgroupv2 level N` compares against).
type CgroupMatch struct {
	Level int
	ID    uint64
}

// Protocol numbers.
const (
	ProtoAny uint8 = 0
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// LocalOnly reports whether only the router's own traffic can match.
func (m Match) LocalOnly() bool {
	return len(m.UIDs) > 0 || len(m.GIDs) > 0 || len(m.Services) > 0 || len(m.Cgroups) > 0
}

// ForwardOnly reports whether only forwarded traffic can match.
func (m Match) ForwardOnly() bool {
	return len(m.Sources) > 0 || len(m.InInterfaces) > 0
}
