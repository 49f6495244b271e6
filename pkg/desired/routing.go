package desired

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/wanpin/wanpin/pkg/inet"
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

// Main is the id of the kernel's main routing table.
const Main = 254

// Routing is what wanpin wants among the kernel's rules and routes.
type Routing struct {
	Rules  []Rule
	Routes []Route
}

// Rule is one `ip rule`: its selectors (all that are set must match) and
// its action.
type Rule struct {
	Family   inet.Family
	Priority int
	// Action: look Table up (the default), or fail the lookup at once.
	Action RuleAction
	Table  int // for Lookup
	// Suppress: `suppress_prefixlength 0`: use the table (main) for anything
	// but a default route. It keeps connected and LAN routes winning over
	// the uplink tables.
	Suppress bool
	// Mark and Mask: `fwmark Mark/Mask`, when Mask is not zero. Mark may
	// be zero: `fwmark 0/M` matches packets that carry none of M's bits.
	Mark, Mask uint32
	Src        netip.Prefix // from; invalid means all
	Dst        netip.Prefix // to; invalid means all
	// Iif: `iif lo` selects the router's own traffic (the kernel looks
	// its routes up with the loopback device as input interface).
	Iif string
}

// RuleAction is what a rule does when it matches.
type RuleAction int

const (
	Lookup RuleAction = iota
	// Unreachable: the route lookup fails with EHOSTUNREACH, the sender
	// learns at once.
	Unreachable
)

// Key identifies a rule for diffing: all of its fields.
func (r Rule) Key() string {
	return fmt.Sprintf("%v|%d|%d|%d|%t|%#x|%#x|%v|%v|%s", r.Family, r.Priority, r.Action, r.Table, r.Suppress, r.Mark, r.Mask, r.Src, r.Dst, r.Iif)
}

// RouteType says what a route does.
type RouteType int

const (
	Unicast RouteType = iota
	// UnreachableRoute: `unreachable`, the lookup fails.
	UnreachableRoute
)

// Route is one route in one of wanpin's tables.
type Route struct {
	Family    inet.Family
	Table     int
	Dst       netip.Prefix // the default route of the family when invalid
	Type      RouteType
	Gateway   netip.Addr // invalid for a point-to-point link (PPP): `dev` only
	Interface string     // for Unicast
	Metric    int
	// OnLink: the gateway is reachable on Interface even though no
	// connected route says so (a configured PPP peer).
	OnLink bool
	// Nexthops, when set, make the route multipath: Interface, Gateway
	// and OnLink are then unused. The kernel picks one per flow by a hash
	// of its addresses, weighted.
	Nexthops []Nexthop
}

// Nexthop is one path of a multipath route.
type Nexthop struct {
	Interface string
	Gateway   netip.Addr // invalid: a point-to-point link
	OnLink    bool
	Weight    int // 1..256
}

// Key identifies a route the way the kernel does: the same key in the
// same table is one route, and a replace swaps its content.
func (r Route) Key() string {
	return fmt.Sprintf("%v|%d|%v|%d", r.Family, r.Table, r.DstPrefix(), r.KernelMetric())
}

// V6DefaultMetric is what the kernel stores for an IPv6 route added with
// metric 0: a route read back with it is the same route.
const V6DefaultMetric = 1024

// KernelMetric is the metric the kernel stores for the route.
func (r Route) KernelMetric() int {
	if r.Family == inet.IPv6 && r.Metric == 0 {
		return V6DefaultMetric
	}
	return r.Metric
}

// DstPrefix is the route's destination, the family's default when unset.
func (r Route) DstPrefix() netip.Prefix {
	if r.Dst.IsValid() {
		return r.Dst
	}
	return r.Family.Default()
}

// ipFlag is the family switch `ip` takes: -4 or -6.
func ipFlag(f inet.Family) string {
	if f == inet.IPv6 {
		return "-6"
	}
	return "-4"
}

// Render prints the routing as `ip rule` and `ip route show table N`
// would, grouped by family and table, so that `wanpin plan` output can be
// compared with the kernel by eye or by diff.
func (d Routing) Render() string {
	var b strings.Builder
	for _, fam := range inet.Families {
		var rules []Rule
		for _, r := range d.Rules {
			if r.Family == fam {
				rules = append(rules, r)
			}
		}
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].Priority < rules[j].Priority })
		if len(rules) > 0 {
			fmt.Fprintf(&b, "# ip %s rule\n", ipFlag(fam))
			for _, r := range rules {
				b.WriteString(r.String())
				b.WriteByte('\n')
			}
		}
		byTable := map[int][]Route{}
		var ids []int
		for _, r := range d.Routes {
			if r.Family != fam {
				continue
			}
			if _, ok := byTable[r.Table]; !ok {
				ids = append(ids, r.Table)
			}
			byTable[r.Table] = append(byTable[r.Table], r)
		}
		sort.Ints(ids)
		for _, id := range ids {
			fmt.Fprintf(&b, "# ip %s route show table %d\n", ipFlag(fam), id)
			routes := byTable[id]
			sort.SliceStable(routes, func(i, j int) bool { return routes[i].Metric < routes[j].Metric })
			for _, r := range routes {
				b.WriteString(r.String())
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

// String prints one rule as `ip rule` does.
func (r Rule) String() string {
	from := "all"
	if r.Src.IsValid() {
		from = r.Src.String()
		if r.Src.IsSingleIP() {
			from = r.Src.Addr().String()
		}
	}
	s := fmt.Sprintf("%d:\tfrom %s", r.Priority, from)
	if r.Dst.IsValid() {
		to := r.Dst.String()
		if r.Dst.IsSingleIP() {
			to = r.Dst.Addr().String()
		}
		s += " to " + to
	}
	if r.Mask != 0 {
		// C's %#x, which ip uses, prints 0 without the 0x.
		mark := fmt.Sprintf("%#x", r.Mark)
		if r.Mark == 0 {
			mark = "0"
		}
		s += fmt.Sprintf(" fwmark %s/%#x", mark, r.Mask)
	}
	if r.Iif != "" {
		s += " iif " + r.Iif
	}
	if r.Action == Unreachable {
		s += " unreachable"
	} else {
		s += " lookup " + tableName(r.Table)
	}
	if r.Suppress {
		s += " suppress_prefixlength 0"
	}
	return s + fmt.Sprintf(" proto %d", Protocol)
}

// String prints one route as `ip route show table N` does.
func (r Route) String() string {
	dst := "default"
	if r.Dst.IsValid() && r.Dst.Bits() != 0 {
		dst = r.Dst.String()
	}
	var s string
	switch {
	case r.Type == UnreachableRoute:
		s = "unreachable " + dst
		if r.Family == inet.IPv6 {
			s += " dev lo"
		}
	case len(r.Nexthops) > 0:
		s = dst
	default:
		s = dst
		if r.Gateway.IsValid() {
			s += " via " + r.Gateway.String()
		}
		s += " dev " + r.Interface
	}
	s += fmt.Sprintf(" proto %d", Protocol)
	if r.Type == Unicast && len(r.Nexthops) == 0 && !r.Gateway.IsValid() && r.Family == inet.IPv4 {
		s += " scope link"
	}
	if r.OnLink {
		s += " onlink"
	}
	if m := r.KernelMetric(); m != 0 {
		s += fmt.Sprintf(" metric %d", m)
	}
	if r.Family == inet.IPv6 {
		s += " pref medium"
	}
	// Multipath, as ip prints it: one line per path.
	for _, nh := range r.Nexthops {
		s += "\n\tnexthop"
		if nh.Gateway.IsValid() {
			s += " via " + nh.Gateway.String()
		}
		s += " dev " + nh.Interface + fmt.Sprintf(" weight %d", nh.Weight)
		if nh.OnLink {
			s += " onlink"
		}
	}
	return s
}

func tableName(id int) string {
	switch id {
	case 254:
		return "main"
	case 253:
		return "default"
	case 255:
		return "local"
	}
	return fmt.Sprint(id)
}
