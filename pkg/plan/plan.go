// Package plan computes what the kernel should hold: the pure function from
// the admin's configuration and the observed state of the uplinks to the
// nftables table, ip rules and routes. It touches nothing; the reconcilers
// in pkg/rules and pkg/tables make the kernel match its answer.
package plan

import (
	"net/netip"
	"reflect"
	"sort"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/rules"
	"github.com/wanpin/wanpin/pkg/tables"
)

// TableName is the name of wanpin's inet table.
const TableName = "wanpin"

// Offsets inside the rule priority block that starts at rule_priority.
// Gaps are left so an admin can put rules of their own between wanpin's.
const (
	// OffsetSuppress: `lookup main suppress_prefixlength 0` comes first, or
	// replies to the LAN and traffic to connected networks would be
	// policy-routed out of an uplink.
	OffsetSuppress = 0
	// OffsetMark + uplink index: the fwmark rules.
	OffsetMark = 100
	// OffsetSource + uplink index: `from <uplink address>` rules. They come
	// after the fwmark rules: the other way round, the router's own traffic
	// that a mark re-routes would stay on the uplink its source address
	// belongs to.
	OffsetSource = 400
	// BlockSize is how many priorities wanpin may use from rule_priority.
	BlockSize = 1000
)

// FamilyState is what wanpin observed of one address family of an uplink.
type FamilyState struct {
	Up      bool         // usable: link up, an address, a way to the gateway
	Addrs   []netip.Addr // the uplink's own addresses of this family
	Gateway netip.Addr   // configured or learned; invalid on point-to-point
	// PointToPoint: no gateway is needed (`default dev ppp0`).
	PointToPoint bool
	// OnLink: the gateway is configured on a point-to-point link, where no
	// connected route covers it.
	OnLink bool
	// Unhealthy: the family is up but its health probes fail (or the
	// admin took the uplink out of service). Its routes stay (the probes
	// need them), but it carries no new connections of this family.
	Unhealthy bool
}

// Usable reports whether the family can carry new connections.
func (f FamilyState) Usable() bool { return f.Up && !f.Unhealthy }

// UplinkState is the observed state of one uplink: each address family is
// up or down on its own.
type UplinkState struct {
	V4, V6 FamilyState
}

// Family returns the state of one family.
func (s UplinkState) Family(v6 bool) FamilyState {
	if v6 {
		return s.V6
	}
	return s.V4
}

// LinkUp reports whether the uplink's link can carry traffic at all.
func (s UplinkState) LinkUp() bool { return s.V4.Up || s.V6.Up }

// Up reports whether the uplink can carry new connections of some family.
func (s UplinkState) Up() bool { return s.V4.Usable() || s.V6.Usable() }

// SetUnhealthy marks both families that are up as unhealthy.
func (s *UplinkState) SetUnhealthy() {
	s.V4.Unhealthy = s.V4.Up
	s.V6.Unhealthy = s.V6.Up
}

// Input is everything the desired state depends on.
type Input struct {
	Config *config.Config
	// Uplinks by name; a missing entry is a down uplink.
	Uplinks map[string]UplinkState
	// Cgroups: the services named by policies, resolved to cgroup ids
	// (empty: the unit is not running right now).
	Cgroups map[string][]rules.CgroupMatch
	// Execs: processes started with `wanpin exec --uplink`, by cgroup.
	// They come before every policy, and are refused rather than sent
	// elsewhere while their uplink is down.
	Execs []Exec
}

// Exec pins one cgroup's new connections to one uplink.
type Exec struct {
	Name   string // [a-z0-9_-]: becomes a chain name
	Uplink string
	Cgroup rules.CgroupMatch
}

// Desired is the whole state wanpin wants in the kernel.
type Desired struct {
	NFT    rules.Spec
	Tables tables.Desired
}

// Build computes the desired state. It is pure: same input, same output.
func Build(in Input) Desired {
	cfg := in.Config
	var d Desired
	d.NFT = rules.Spec{Table: TableName, Mask: cfg.MarkMask, LANPrefix6: cfg.LANPrefix6}
	prio := cfg.RulePriority

	for _, fam := range tables.Families {
		d.Tables.Rules = append(d.Tables.Rules, tables.Rule{
			Family: fam, Priority: prio + OffsetSuppress, Table: 254, Suppress: true,
		})
	}
	for i, u := range cfg.Uplinks {
		st := in.Uplinks[u.Name]
		mark := cfg.UplinkMark(i)
		var addrs []netip.Addr
		addrs = append(addrs, st.V4.Addrs...)
		addrs = append(addrs, st.V6.Addrs...)
		d.NFT.Uplinks = append(d.NFT.Uplinks, rules.Uplink{
			Name: u.Name, Interface: u.Interface, Mark: mark,
			Masquerade: u.Masquerade, NAT6: rules.NAT6(u.Nat6), Prefix6: u.Prefix6, Addrs: addrs,
		})
		if u.Nat6 == config.Nat6None && st.V6.Usable() {
			// The source prefix chooses the uplink. While the uplink's
			// IPv6 is out, its hosts are balanced like the others and
			// masqueraded wherever they leave.
			d.NFT.Source6 = append(d.NFT.Source6, rules.SourcePrefix{Prefix: u.Prefix6, Mark: mark})
		}
		for _, fam := range tables.Families {
			fs := st.Family(fam == tables.V6)
			d.Tables.Rules = append(d.Tables.Rules, tables.Rule{
				Family: fam, Priority: prio + OffsetMark + i + 1, Table: u.Table,
				Mark: mark, Mask: cfg.MarkMask,
			})
			for _, a := range fs.Addrs {
				d.Tables.Rules = append(d.Tables.Rules, tables.Rule{
					Family: fam, Priority: prio + OffsetSource + i + 1, Table: u.Table,
					Src: netip.PrefixFrom(a, a.BitLen()),
				})
			}
			d.Tables.Routes = append(d.Tables.Routes, tables.Route{
				Family: fam, Table: u.Table, Type: tables.Unreachable, Metric: tables.UnreachableMetric,
			})
			if fs.Up {
				d.Tables.Routes = append(d.Tables.Routes, tables.Route{
					Family: fam, Table: u.Table, Interface: u.Interface, Gateway: fs.Gateway, OnLink: fs.OnLink,
				})
			}
		}
	}

	all := make([]string, len(cfg.Uplinks))
	for i, u := range cfg.Uplinks {
		all[i] = u.Name
	}
	d.NFT.Default = balancer(cfg, in.Uplinks, all)
	for _, e := range in.Execs {
		b := balancer(cfg, in.Uplinks, []string{e.Uplink})
		b.Reject = len(b.Buckets) == 0
		if b.V6 != nil {
			b.V6.Reject = len(b.V6.Buckets) == 0
		}
		d.NFT.Policies = append(d.NFT.Policies, rules.Policy{
			Name: e.Name, Cgroups: []rules.CgroupMatch{e.Cgroup}, Balancer: b,
		})
	}
	for _, p := range cfg.Policies {
		cands := p.Uplinks
		if len(cands) == 0 {
			cands = all
		}
		b := balancer(cfg, in.Uplinks, cands)
		fallback := func(c *rules.Choice) {
			if len(c.Buckets) == 0 {
				c.Reject, c.FallbackDefault = p.FallbackNone, !p.FallbackNone
			}
		}
		fallback(&b.Choice)
		if b.V6 != nil {
			fallback(b.V6)
		}
		rp := rules.Policy{
			Name: p.Name, UIDs: p.UIDs, GIDs: p.GIDs,
			Sources: p.Sources, InInterfaces: p.InInterfaces,
			Destinations: p.Destinations, Protocol: p.Protocol,
			Balancer: b,
		}
		for _, pr := range p.Ports {
			rp.Ports = append(rp.Ports, rules.PortRange{First: pr.First, Last: pr.Last})
		}
		if len(p.Services) > 0 {
			for _, svc := range p.Services {
				rp.Cgroups = append(rp.Cgroups, in.Cgroups[svc]...)
			}
			rp.ServicesUnresolved = len(rp.Cgroups) == 0
		}
		d.NFT.Policies = append(d.NFT.Policies, rp)
	}
	return d
}

// balancer picks, per family, among the named candidates whose family is
// usable, those of the best (lowest) tier, with their weights. Tiers are
// per family too: a backup uplink carries IPv6 while no better uplink has
// working IPv6, even if they all have IPv4.
func balancer(cfg *config.Config, states map[string]UplinkState, names []string) rules.Balancer {
	c4 := choose(cfg, states, names, false)
	c6 := choose(cfg, states, names, true)
	b := rules.Balancer{Choice: c4}
	if !reflect.DeepEqual(c4, c6) {
		b.V6 = &c6
	}
	return b
}

func choose(cfg *config.Config, states map[string]UplinkState, names []string, v6 bool) rules.Choice {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	usable := func(u config.Uplink) bool { return want[u.Name] && states[u.Name].Family(v6).Usable() }
	best := 0
	for _, u := range cfg.Uplinks {
		if usable(u) && (best == 0 || u.Tier < best) {
			best = u.Tier
		}
	}
	var c rules.Choice
	for i, u := range cfg.Uplinks {
		if usable(u) && u.Tier == best {
			c.Buckets = append(c.Buckets, rules.Bucket{Mark: cfg.UplinkMark(i), Weight: u.Weight})
		}
	}
	sort.Slice(c.Buckets, func(i, j int) bool { return c.Buckets[i].Mark < c.Buckets[j].Mark })
	return c
}
