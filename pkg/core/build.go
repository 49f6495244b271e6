package core

import (
	"net/netip"
	"sort"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
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

// Facts are everything the desired state depends on.
type Facts struct {
	Config *config.Config
	// Uplinks by name; a missing entry is a down uplink.
	Uplinks map[string]UplinkState
	// Cgroups: the services named by policies, resolved to cgroup ids
	// (empty: the unit is not running right now).
	Cgroups map[string][]policy.CgroupMatch
	// Execs: processes started with `wanpin exec --uplink`, by cgroup.
	// They come before every policy, and are refused rather than sent
	// elsewhere while their uplink is down.
	Execs []Exec
}

// Exec pins one cgroup's new connections to one uplink.
type Exec struct {
	Name   string // [a-z0-9_-]: becomes a chain name
	Uplink string
	Cgroup policy.CgroupMatch
}

// Build computes the desired state. It is pure: same input, same output.
func Build(in Facts) desired.State {
	cfg := in.Config
	var d desired.State
	d.NFT = desired.NFT{Table: TableName, Mask: cfg.MarkMask, LANPrefix6: cfg.LANPrefix6}
	prio := cfg.RulePriority

	for _, fam := range inet.Families {
		d.Routing.Rules = append(d.Routing.Rules, desired.Rule{
			Family: fam, Priority: prio + OffsetSuppress, Table: desired.Main, Suppress: true,
		})
	}
	for i, u := range cfg.Uplinks {
		st := in.Uplinks[u.Name]
		mark := cfg.UplinkMark(i)
		d.NFT.Uplinks = append(d.NFT.Uplinks, desired.Uplink{
			Name: u.Name, Interface: u.Interface, Mark: mark,
			Masquerade: u.Masquerade, NAT6: desired.NAT6(u.Nat6), Prefix6: u.Prefix6, Addrs: st.Addrs(),
		})
		if u.Nat6 == config.Nat6None && st.Family(inet.IPv6).Usable() {
			// The source prefix chooses the uplink. While the uplink's
			// IPv6 is out, its hosts are balanced like the others and
			// masqueraded wherever they leave.
			d.NFT.Source6 = append(d.NFT.Source6, desired.SourcePrefix{Prefix: u.Prefix6, Mark: mark})
		}
		for _, fam := range inet.Families {
			fs := st.Family(fam)
			d.Routing.Rules = append(d.Routing.Rules, desired.Rule{
				Family: fam, Priority: prio + OffsetMark + i + 1, Table: u.Table,
				Mark: mark, Mask: cfg.MarkMask,
			})
			for _, a := range fs.Addrs {
				d.Routing.Rules = append(d.Routing.Rules, desired.Rule{
					Family: fam, Priority: prio + OffsetSource + i + 1, Table: u.Table,
					Src: netip.PrefixFrom(a, a.BitLen()),
				})
			}
			d.Routing.Routes = append(d.Routing.Routes, desired.Route{
				Family: fam, Table: u.Table, Type: desired.Unreachable, Metric: desired.UnreachableMetric,
			})
			if fs.Up {
				d.Routing.Routes = append(d.Routing.Routes, desired.Route{
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
		for _, f := range inet.Families {
			c := b.For(f)
			c.Reject = len(c.Buckets) == 0
			setChoice(&b, f, c)
		}
		d.NFT.Policies = append(d.NFT.Policies, desired.Policy{
			Name: e.Name, Match: policy.Match{Cgroups: []policy.CgroupMatch{e.Cgroup}}, Balancer: b,
		})
	}
	for _, p := range cfg.Policies {
		cands := p.Uplinks
		if len(cands) == 0 {
			cands = all
		}
		b := balancer(cfg, in.Uplinks, cands)
		for _, f := range inet.Families {
			if c := b.For(f); len(c.Buckets) == 0 {
				c.Reject, c.FallbackDefault = p.FallbackNone, !p.FallbackNone
				setChoice(&b, f, c)
			}
		}
		m := p.Match
		if len(m.Services) > 0 {
			m.Cgroups = nil
			for _, svc := range m.Services {
				m.Cgroups = append(m.Cgroups, in.Cgroups[svc]...)
			}
		}
		d.NFT.Policies = append(d.NFT.Policies, desired.Policy{Name: p.Name, Match: m, Balancer: b})
	}
	return d
}

func setChoice(b *desired.Balancer, f inet.Family, c desired.Choice) {
	if f == inet.IPv6 {
		b.V6 = c
	} else {
		b.V4 = c
	}
}

// balancer picks, per family, among the named candidates whose family is
// usable, those of the best (lowest) tier, with their weights. Tiers are
// per family too: a backup uplink carries IPv6 while no better uplink has
// working IPv6, even if they all have IPv4.
func balancer(cfg *config.Config, states map[string]UplinkState, names []string) desired.Balancer {
	return desired.Balancer{V4: choose(cfg, states, names, inet.IPv4), V6: choose(cfg, states, names, inet.IPv6)}
}

func choose(cfg *config.Config, states map[string]UplinkState, names []string, f inet.Family) desired.Choice {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	usable := func(u config.Uplink) bool { return want[u.Name] && states[u.Name].Family(f).Usable() }
	best := 0
	for _, u := range cfg.Uplinks {
		if usable(u) && (best == 0 || u.Tier < best) {
			best = u.Tier
		}
	}
	var c desired.Choice
	for i, u := range cfg.Uplinks {
		if usable(u) && u.Tier == best {
			c.Buckets = append(c.Buckets, desired.Bucket{Mark: cfg.UplinkMark(i), Weight: u.Weight})
		}
	}
	sort.Slice(c.Buckets, func(i, j int) bool { return c.Buckets[i].Mark < c.Buckets[j].Mark })
	return c
}
