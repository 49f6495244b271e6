// Package tables keeps wanpin's routing tables and policy rules (`ip rule`)
// in the kernel equal to a desired list (desired.Routing), touching
// nothing else: every rule and route it installs carries desired.Protocol
// as an ownership tag, and only objects with that tag are ever changed or
// deleted. A rule of ours outside the configured priority block (the
// admin moved rule_priority) is stale and goes on the next apply.
package tables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/rtnl"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
)

// Manager reconciles wanpin's rules and routes in one network namespace.
type Manager struct {
	h *netlink.Handle
}

// New connects to the network namespace ns (netns.None() for the current one).
func New(ns netns.NsHandle) (*Manager, error) {
	h, err := rtnl.Open(ns)
	if err != nil {
		return nil, err
	}
	return &Manager{h: h}, nil
}

// Close releases the netlink socket.
func (m *Manager) Close() { m.h.Close() }

// Result counts what an Apply changed, and lists the routes it left to
// another program.
type Result struct {
	RulesAdded, RulesDeleted   int
	RoutesAdded, RoutesDeleted int
	// Conflicts: routes of d that were not installed because a route of
	// another program holds their place (same table, destination and
	// metric).
	Conflicts []Conflict
}

// Conflict is a route wanpin wants where another program's route is.
type Conflict struct {
	Route   desired.Route // wanpin's, not installed
	Foreign string        // what holds its place: "proto 3"
}

// Changed reports whether anything was changed (conflicts change nothing).
func (r Result) Changed() bool {
	return r.RulesAdded+r.RulesDeleted+r.RoutesAdded+r.RoutesDeleted > 0
}

// Apply makes the kernel's wanpin-owned rules and routes equal to d. It
// adds and replaces before it deletes, so at no moment does traffic find
// fewer rules than either the old or the new state has. Objects that are
// not wanpin's (another protocol tag, or outside scope) are never touched:
// a route of d whose place another program's route holds is left out and
// listed in Result.Conflicts, and the rest of d is applied all the same
// (one hook script's route in one table must not stop the repair and the
// failover of every other table and rule). Applying the same d twice
// changes nothing the second time.
func (m *Manager) Apply(d desired.Routing) (Result, error) {
	var res Result
	haveRoutes, err := m.ownedRoutes()
	if err != nil {
		return res, err
	}
	wantRoutes := map[string]desired.Route{}
	for _, r := range d.Routes {
		wantRoutes[r.Key()] = r
	}
	haveRules, err := m.ownedRules()
	if err != nil {
		return res, err
	}
	wantRules := map[string]desired.Rule{}
	for _, r := range d.Rules {
		wantRules[r.Key()] = r
	}

	// Never replace another program's route: a route of the same key in
	// one of our tables that is not ours is left where it is.
	foreign, err := m.foreignRoutes(d.Routes)
	if err != nil {
		return res, err
	}
	// Routes first: a rule pointing at a table must find its routes there.
	for _, r := range d.Routes {
		if cur, ok := haveRoutes[r.Key()]; ok && sameRoute(cur.spec, r) {
			continue
		}
		if f, ok := foreign[r.Key()]; ok {
			res.Conflicts = append(res.Conflicts, Conflict{Route: r, Foreign: f})
			continue
		}
		nr, err := m.toNetlinkRoute(r)
		if err != nil {
			return res, err
		}
		if err := m.h.RouteReplace(nr); err != nil {
			return res, fmt.Errorf("installing route %q in table %d: %w", r.String(), r.Table, err)
		}
		res.RoutesAdded++
	}
	for _, r := range d.Rules {
		if _, ok := haveRules[r.Key()]; ok {
			continue
		}
		if err := m.h.RuleAdd(toNetlinkRule(r)); err != nil && !errors.Is(err, unix.EEXIST) {
			return res, fmt.Errorf("adding rule %q: %w", r.String(), err)
		}
		res.RulesAdded++
	}
	for k, r := range haveRules {
		if _, ok := wantRules[k]; ok {
			continue
		}
		if err := m.h.RuleDel(r.nl); err != nil && !errors.Is(err, unix.ENOENT) {
			return res, fmt.Errorf("deleting stale rule %q: %w", r.spec.String(), err)
		}
		res.RulesDeleted++
	}
	for k, r := range haveRoutes {
		if _, ok := wantRoutes[k]; ok {
			continue
		}
		if err := m.h.RouteDel(r.nl); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return res, fmt.Errorf("deleting stale route %q: %w", r.spec.String(), err)
		}
		res.RoutesDeleted++
	}
	return res, nil
}

// Remove deletes every rule and route wanpin owns.
func (m *Manager) Remove() (Result, error) {
	var res Result
	rules, err := m.ownedRules()
	if err != nil {
		return res, err
	}
	for _, r := range rules {
		if err := m.h.RuleDel(r.nl); err != nil && !errors.Is(err, unix.ENOENT) {
			return res, fmt.Errorf("deleting rule %q: %w", r.spec.String(), err)
		}
		res.RulesDeleted++
	}
	routes, err := m.ownedRoutes()
	if err != nil {
		return res, err
	}
	for _, r := range routes {
		if err := m.h.RouteDel(r.nl); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return res, fmt.Errorf("deleting route %q: %w", r.spec.String(), err)
		}
		res.RoutesDeleted++
	}
	return res, nil
}

// Current returns the wanpin-owned rules and routes the kernel holds now.
func (m *Manager) Current() (desired.Routing, error) {
	var d desired.Routing
	rules, err := m.ownedRules()
	if err != nil {
		return d, err
	}
	for _, r := range rules {
		d.Rules = append(d.Rules, r.spec)
	}
	routes, err := m.ownedRoutes()
	if err != nil {
		return d, err
	}
	for _, r := range routes {
		d.Routes = append(d.Routes, r.spec)
	}
	return d, nil
}

// Contested lists which of routes another program's route holds the place
// of now, by route key, with what holds it ("proto 3"): the drift check
// asks it of the conflicts it knows, so that such a route counts as
// missing again only once the other program's route is gone.
func (m *Manager) Contested(routes []desired.Route) (map[string]string, error) {
	foreign, err := m.foreignRoutes(routes)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range routes {
		if f, ok := foreign[r.Key()]; ok {
			out[r.Key()] = f
		}
	}
	return out, nil
}

// foreignRoutes lists the routes in the tables routes go to that are not
// wanpin's, by the key a route of ours would have.
func (m *Manager) foreignRoutes(routes []desired.Route) (map[string]string, error) {
	out := map[string]string{}
	seen := map[string]bool{}
	for _, r := range routes {
		k := fmt.Sprintf("%v|%d", r.Family, r.Table)
		if seen[k] {
			continue
		}
		seen[k] = true
		list, err := m.h.RouteListFiltered(r.Family.AF(), &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("listing %v routes of table %d: %w", r.Family, r.Table, err)
		}
		for i := range list {
			nr := &list[i]
			if nr.Protocol == desired.Protocol {
				continue
			}
			spec, err := m.fromNetlinkRoute(r.Family, nr)
			if err != nil {
				continue
			}
			out[spec.Key()] = fmt.Sprintf("proto %d", nr.Protocol)
		}
	}
	return out, nil
}

// Foreign is what other programs do with routing table ids.
type Foreign struct {
	// Routes: tables that hold routes of other programs.
	Routes map[int]bool
	// Rules: tables that other programs' rules look up, each with the
	// lowest priority of such a rule (for people: `ip rule` shows it).
	Rules map[int]int
}

// ForeignTables lists the routing tables that other programs use, in
// either family: those that hold a route without wanpin's protocol tag,
// and those that a rule without the tag looks up. wanpin must never pick
// one of those for an uplink: a table that another program's rule looks
// up is that program's even while it is empty (a VPN's table gets its
// routes when the tunnel comes up), and wanpin's routes in it would
// capture the traffic the rule selects.
func (m *Manager) ForeignTables() (Foreign, error) {
	out := Foreign{Routes: map[int]bool{}, Rules: map[int]int{}}
	for _, fam := range inet.Families {
		list, err := m.h.RouteListFiltered(fam.AF(), &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return out, fmt.Errorf("listing %v routes: %w", fam, err)
		}
		for _, r := range list {
			if r.Protocol != desired.Protocol {
				out.Routes[r.Table] = true
			}
		}
		rules, err := m.h.RuleList(fam.AF())
		if err != nil {
			return out, fmt.Errorf("listing %v rules: %w", fam, err)
		}
		for _, r := range rules {
			// Table 0: a rule that looks nothing up (unreachable,
			// blackhole, goto).
			if r.Protocol == desired.Protocol || r.Table == unix.RT_TABLE_UNSPEC {
				continue
			}
			if p, ok := out.Rules[r.Table]; !ok || r.Priority < p {
				out.Rules[r.Table] = r.Priority
			}
		}
	}
	return out, nil
}

type ownedRule struct {
	spec desired.Rule
	nl   *netlink.Rule
}

type ownedRoute struct {
	spec desired.Route
	nl   *netlink.Route
}

// ownedRules lists rules tagged with Protocol. RuleListFiltered cannot
// filter on protocol, so the filtering is done here.
func (m *Manager) ownedRules() (map[string]ownedRule, error) {
	out := map[string]ownedRule{}
	for _, fam := range inet.Families {
		list, err := m.h.RuleList(fam.AF())
		if err != nil {
			return nil, fmt.Errorf("listing %v rules: %w", fam, err)
		}
		for i := range list {
			nr := &list[i]
			if nr.Protocol != desired.Protocol {
				continue
			}
			spec := fromNetlinkRule(fam, nr)
			out[spec.Key()] = ownedRule{spec: spec, nl: nr}
		}
	}
	return out, nil
}

func (m *Manager) ownedRoutes() (map[string]ownedRoute, error) {
	out := map[string]ownedRoute{}
	for _, fam := range inet.Families {
		list, err := m.h.RouteListFiltered(fam.AF(), &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: desired.Protocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return nil, fmt.Errorf("listing %v routes: %w", fam, err)
		}
		for i := range list {
			nr := &list[i]
			spec, err := m.fromNetlinkRoute(fam, nr)
			if err != nil {
				return nil, err
			}
			out[spec.Key()] = ownedRoute{spec: spec, nl: nr}
		}
	}
	return out, nil
}

func toNetlinkRule(r desired.Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = r.Family.AF()
	nr.Priority = r.Priority
	nr.Protocol = desired.Protocol
	if r.Action == desired.Unreachable {
		nr.Type = unix.RTN_UNREACHABLE // FR_ACT_UNREACHABLE
	} else {
		nr.Table = r.Table
	}
	if r.Suppress {
		nr.SuppressPrefixlen = 0
	}
	if r.Mask != 0 {
		nr.Mark = r.Mark
		mask := r.Mask
		nr.Mask = &mask
	}
	if r.Src.IsValid() {
		nr.Src = prefixToIPNet(r.Src)
	}
	if r.Dst.IsValid() {
		nr.Dst = prefixToIPNet(r.Dst)
	}
	nr.IifName = r.Iif
	return nr
}

func fromNetlinkRule(fam inet.Family, nr *netlink.Rule) desired.Rule {
	r := desired.Rule{Family: fam, Priority: nr.Priority, Table: nr.Table, Suppress: nr.SuppressPrefixlen == 0, Mark: nr.Mark,
		Iif: nr.IifName}
	// The library does not read the rule's action back; a rule without a
	// table and without a goto is one of wanpin's unreachable rules (it
	// makes no other kind).
	if nr.Table == 0 && nr.Goto < 0 {
		r.Action = desired.Unreachable
	}
	if nr.Mask != nil {
		r.Mask = *nr.Mask
	} else if nr.Mark != 0 {
		r.Mask = ^uint32(0)
	}
	if nr.Src != nil {
		if p, ok := ipNetToPrefix(nr.Src); ok {
			r.Src = p
		}
	}
	if nr.Dst != nil {
		if p, ok := ipNetToPrefix(nr.Dst); ok {
			r.Dst = p
		}
	}
	return r
}

func (m *Manager) toNetlinkRoute(r desired.Route) (*netlink.Route, error) {
	nr := &netlink.Route{
		Family:   r.Family.AF(),
		Table:    r.Table,
		Dst:      prefixToIPNet(r.DstPrefix()),
		Protocol: desired.Protocol,
		Priority: r.Metric,
	}
	switch {
	case r.Type == desired.UnreachableRoute:
		nr.Type = unix.RTN_UNREACHABLE
	case len(r.Nexthops) > 0:
		nr.Type = unix.RTN_UNICAST
		for _, nh := range r.Nexthops {
			link, err := m.h.LinkByName(nh.Interface)
			if err != nil {
				return nil, fmt.Errorf("multipath route in table %d: interface %s: %w", r.Table, nh.Interface, err)
			}
			ni := &netlink.NexthopInfo{LinkIndex: link.Attrs().Index, Hops: nh.Weight - 1}
			if nh.Gateway.IsValid() {
				ni.Gw = net.IP(nh.Gateway.AsSlice())
			}
			if nh.OnLink {
				ni.Flags = int(netlink.FLAG_ONLINK)
			}
			nr.MultiPath = append(nr.MultiPath, ni)
		}
	default:
		link, err := m.h.LinkByName(r.Interface)
		if err != nil {
			return nil, fmt.Errorf("route in table %d: interface %s: %w", r.Table, r.Interface, err)
		}
		nr.LinkIndex = link.Attrs().Index
		nr.Type = unix.RTN_UNICAST
		if r.Gateway.IsValid() {
			nr.Gw = net.IP(r.Gateway.AsSlice())
			if r.OnLink {
				nr.Flags = int(netlink.FLAG_ONLINK)
			}
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
	}
	return nr, nil
}

func (m *Manager) fromNetlinkRoute(fam inet.Family, nr *netlink.Route) (desired.Route, error) {
	r := desired.Route{Family: fam, Table: nr.Table, Metric: nr.Priority}
	if fam == inet.IPv6 && r.Metric == desired.V6DefaultMetric {
		r.Metric = 0
	}
	if nr.Dst != nil {
		if p, ok := ipNetToPrefix(nr.Dst); ok && p.Bits() != 0 {
			r.Dst = p
		}
	}
	if nr.Type == unix.RTN_UNREACHABLE {
		r.Type = desired.UnreachableRoute
		return r, nil
	}
	if nr.Gw != nil {
		if a, ok := netip.AddrFromSlice(nr.Gw); ok {
			r.Gateway = a.Unmap()
		}
	}
	r.OnLink = nr.Flags&int(netlink.FLAG_ONLINK) != 0
	for _, ni := range nr.MultiPath {
		nh := desired.Nexthop{Weight: ni.Hops + 1, OnLink: ni.Flags&int(netlink.FLAG_ONLINK) != 0}
		if a, ok := netip.AddrFromSlice(ni.Gw); ok {
			nh.Gateway = a.Unmap()
		}
		if link, err := m.h.LinkByIndex(ni.LinkIndex); err == nil {
			nh.Interface = link.Attrs().Name
		}
		r.Nexthops = append(r.Nexthops, nh)
	}
	if nr.LinkIndex != 0 {
		if link, err := m.h.LinkByIndex(nr.LinkIndex); err == nil {
			r.Interface = link.Attrs().Name
		}
	}
	return r, nil
}

// sameRoute reports whether the installed route already is what we want.
func sameRoute(have, want desired.Route) bool {
	if want.Dst.IsValid() && want.Dst.Bits() == 0 {
		want.Dst = netip.Prefix{}
	}
	return have.String() == want.String() && have.Key() == want.Key()
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}
