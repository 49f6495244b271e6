// Package tables keeps wanpin's routing tables and policy rules (`ip rule`)
// in the kernel equal to a desired list, touching nothing else: every rule
// and route it installs carries Protocol as an ownership tag, and only
// objects with that tag are ever changed or deleted. A rule of ours outside
// the configured priority block (the admin moved rule_priority) is stale
// and goes on the next apply.
package tables

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Protocol tags every rule and route wanpin installs (`proto 119` in ip's
// output). It is how a restarted daemon finds its own objects again, and
// why it never deletes anybody else's.
const Protocol = 119

// UnreachableMetric is the metric of the `unreachable default` route in each
// uplink table. It is the highest metric there is, so the real default route
// always wins while it exists; without it an uplink table with no default
// route would let marked traffic fall through to the main table and leave
// through another uplink with the wrong source address.
const UnreachableMetric = 4278198272

// Family is an address family: unix.AF_INET or unix.AF_INET6.
type Family int

const (
	V4 Family = unix.AF_INET
	V6 Family = unix.AF_INET6
)

func (f Family) String() string {
	if f == V6 {
		return "-6"
	}
	return "-4"
}

// Families lists both, in the order wanpin handles them.
var Families = []Family{V4, V6}

// Rule is one `ip rule`. Exactly one of the selectors is used: Suppress
// (`lookup main suppress_prefixlength 0`), Mark (fwmark), Src (from).
type Rule struct {
	Family   Family
	Priority int
	Table    int // lookup
	// Suppress: `suppress_prefixlength 0`: use the table (main) for anything
	// but a default route. It keeps connected and LAN routes winning over
	// the uplink tables.
	Suppress bool
	Mark     uint32 // fwmark, with Mask
	Mask     uint32
	Src      netip.Prefix // from; invalid means all
}

// Key identifies a rule for diffing: all of its fields.
func (r Rule) Key() string {
	return fmt.Sprintf("%v|%d|%d|%t|%#x|%#x|%v", r.Family, r.Priority, r.Table, r.Suppress, r.Mark, r.Mask, r.Src)
}

// RouteType says what a route does.
type RouteType int

const (
	Unicast RouteType = iota
	Unreachable
)

// Route is one route in one of wanpin's tables.
type Route struct {
	Family    Family
	Table     int
	Dst       netip.Prefix // the default route of the family when invalid
	Type      RouteType
	Gateway   netip.Addr // invalid for a point-to-point link (PPP): `dev` only
	Interface string     // for Unicast
	Metric    int
	// OnLink: the gateway is reachable on Interface even though no
	// connected route says so (a configured PPP peer).
	OnLink bool
}

// Key identifies a route the way the kernel does: the same key in the
// same table is one route, and RouteReplace swaps its content.
func (r Route) Key() string {
	return fmt.Sprintf("%v|%d|%v|%d", r.Family, r.Table, r.dst(), r.metric())
}

// v6DefaultMetric is what the kernel stores for an IPv6 route added with
// metric 0: a route read back with it is the same route.
const v6DefaultMetric = 1024

func (r Route) metric() int {
	if r.Family == V6 && r.Metric == 0 {
		return v6DefaultMetric
	}
	return r.Metric
}

func (r Route) dst() netip.Prefix {
	if r.Dst.IsValid() {
		return r.Dst
	}
	if r.Family == V6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

// Desired is what the kernel should hold.
type Desired struct {
	Rules  []Rule
	Routes []Route
}
