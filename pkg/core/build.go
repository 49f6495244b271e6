package core

import (
	"net/netip"
	"slices"
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
	// OffsetDNS: `to <resolver> fwmark 0/M iif lo lookup <its uplink>`:
	// the router's own queries to an uplink's resolvers leave through that
	// uplink (ISP resolvers often answer only their own customers), or
	// fail at once while it is out (the resolver then tries the next).
	// Marked traffic (health probes, wanpin exec, policies) keeps its mark.
	OffsetDNS = 50
	// OffsetMark + uplink index: the fwmark rules.
	OffsetMark = 100
	// OffsetSource + uplink index: `from <uplink address>` rules. They come
	// after the fwmark rules: the other way round, the router's own traffic
	// that a mark re-routes would stay on the uplink its source address
	// belongs to.
	OffsetSource = 400
	// OffsetRouter: `iif lo lookup <router table>`: the router's own
	// traffic that nothing above took (no mark, a socket not bound to an
	// uplink's address) takes the multipath route over the usable
	// uplinks, so it gets the source address of the uplink it leaves by.
	OffsetRouter = 700
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
	// Tables: the routing tables chosen (AssignTables); when empty, they
	// are chosen as if the kernel held no other program's tables.
	Tables Tables
	// Weights: the adaptive weights of weight = "auto" uplinks; those
	// missing have their prior (AutoPrior).
	Weights map[string]int
}

// Exec pins one cgroup's new connections to one uplink.
type Exec struct {
	Name   string // [a-z0-9_-]: becomes a chain name
	Uplink string
	Cgroup policy.CgroupMatch
}

// Build computes the desired state. It is pure: same input, same output.
func Build(in Facts) desired.State {
	cfg := WithWeights(in.Config, in.Weights)
	tables := in.Tables
	if tables.Uplinks == nil {
		tables, _, _ = AssignTables(cfg, TableUse{}, Tables{})
	}
	var d desired.State
	d.NFT = desired.NFT{Table: TableName, Mask: cfg.MarkMask, LANPrefix6: cfg.LANPrefix6}
	if cfg.Domains() {
		// The mask's last value, failback's evict ct mark: as a packet's
		// meta mark it matches no ip rule and no uplink's, and wanpin's
		// output chain lets a packet marked inside the mask go as routed.
		d.NFT.DNSHold = desired.DNSHold{Group: cfg.DomainNFLOGGroup, Mark: cfg.EvictMark()}
	}
	if cfg.Failback() {
		d.NFT.Evict = cfg.EvictMark()
	}
	if last := len(cfg.Uplinks); last == 0 || cfg.UplinkMark(last-1) != cfg.EvictMark() {
		// The mask's last value as a packet's mark: no ip rule and no
		// uplink's (failback's evict uses it as a ct mark, the DNS hold
		// for answers that never leave by an uplink).
		d.NFT.RejectMark = cfg.EvictMark()
	}
	d.MPTCP = buildMPTCP(cfg, in.Uplinks)
	d.NFT.MPTCP = cfg.MPTCP
	prio := cfg.RulePriority

	for _, fam := range inet.Families {
		d.Routing.Rules = append(d.Routing.Rules, desired.Rule{
			Family: fam, Priority: prio + OffsetSuppress, Table: desired.Main, Suppress: true,
		})
	}
	for i, u := range cfg.Uplinks {
		st := in.Uplinks[u.Name]
		mark := cfg.UplinkMark(i)
		u.Table = tables.Uplinks[u.Name]
		d.NFT.Uplinks = append(d.NFT.Uplinks, desired.Uplink{
			Name: u.Name, Interface: u.Interface, Mark: mark,
			Masquerade: u.Masquerade, NAT6: desired.NAT6(u.Nat6), Prefix6: u.Prefix6, Addrs: st.Addrs(),
			NAT:       inet.PerFamily[netip.Addr]{st.Family(inet.IPv4).NAT, st.Family(inet.IPv6).NAT},
			NoGateway: st.Gatewayless(),
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
			// A socket bound to the uplink's address (a connected UDP
			// socket: NTP, a VPN client) keeps it while it is usable.
			// While it is out, no rule: after its flush the socket's next
			// packet takes the router's multipath route like any other,
			// and leaves a live uplink translated to that uplink's address
			// (natRules, foreignAddrMasq). With the rule, it went on into
			// the dead ISP (the routes stay for the probes) or hit the
			// unreachable route, for as long as the socket lived.
			for _, a := range fs.Addrs {
				if fs.Usable() {
					d.Routing.Rules = append(d.Routing.Rules, desired.Rule{
						Family: fam, Priority: prio + OffsetSource + i + 1, Table: u.Table,
						Src: netip.PrefixFrom(a, a.BitLen()),
					})
				}
			}
			d.Routing.Routes = append(d.Routing.Routes, desired.Route{
				Family: fam, Table: u.Table, Type: desired.UnreachableRoute, Metric: desired.UnreachableMetric,
			})
			if fs.Up {
				d.Routing.Routes = append(d.Routing.Routes, desired.Route{
					Family: fam, Table: u.Table, Interface: u.Interface, Gateway: fs.Gateway, OnLink: fs.OnLink,
				})
			}
		}
		// The uplink's resolvers, each in its own family.
		for _, fam := range inet.Families {
			for _, a := range st.Family(fam).DNS {
				r := desired.Rule{Family: fam, Priority: prio + OffsetDNS, Dst: netip.PrefixFrom(a, a.BitLen()),
					Mark: 0, Mask: cfg.MarkMask, Iif: "lo", Table: u.Table}
				if !st.Family(fam).Usable() {
					r.Action, r.Table = desired.Unreachable, 0
				}
				d.Routing.Rules = append(d.Routing.Rules, r)
			}
		}
	}
	if cfg.RouterTraffic == config.RouterBalance && tables.Router != 0 {
		for _, fam := range inet.Families {
			d.Routing.Rules = append(d.Routing.Rules, desired.Rule{Family: fam, Priority: prio + OffsetRouter, Table: tables.Router, Iif: "lo"})
			if r, ok := routerRoute(cfg, in.Uplinks, tables, fam); ok {
				d.Routing.Routes = append(d.Routing.Routes, r)
			}
		}
	}

	all := make([]string, len(cfg.Uplinks))
	for i, u := range cfg.Uplinks {
		all[i] = u.Name
	}
	d.NFT.Default = balancer(cfg, in.Uplinks, all, all)
	d.NFT.Default.Sticky = desiredSticky(cfg.Sticky)
	for _, e := range in.Execs {
		b := balancer(cfg, in.Uplinks, []string{e.Uplink}, []string{e.Uplink})
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
		// With fallback = "any" the policy may use every uplink: one
		// whose quota is used up is its last resort after all of them.
		reach := all
		if p.FallbackNone {
			reach = cands
		}
		b := balancer(cfg, in.Uplinks, cands, reach)
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
		b.Sticky = desiredSticky(p.Sticky)
		d.NFT.Policies = append(d.NFT.Policies, desired.Policy{Name: p.Name, Match: m, Balancer: b})
	}
	return d
}

func desiredSticky(s config.Sticky) desired.Sticky {
	return desired.Sticky{Timeout: s.Timeout, ByDestination: s.ByDestination}
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
//
// An uplink whose data quota is used up (Exhausted) is worse than every
// tier: it is a candidate only while no uplink of reach (the uplinks the
// choice may end up on: all of them, or a policy's own candidates when
// it has no fallback) whose quota is not used up can carry the family.
func balancer(cfg *config.Config, states map[string]UplinkState, names, reach []string) desired.Balancer {
	return desired.Balancer{V4: choose(cfg, states, names, reach, inet.IPv4), V6: choose(cfg, states, names, reach, inet.IPv6)}
}

func choose(cfg *config.Config, states map[string]UplinkState, names, reach []string, f inet.Family) desired.Choice {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	spare := slices.ContainsFunc(reach, func(n string) bool {
		st := states[n]
		return st.Family(f).Usable() && !st.Exhausted
	})
	usable := func(u config.Uplink) bool {
		st := states[u.Name]
		return want[u.Name] && st.Family(f).Usable() && (!st.Exhausted || !spare)
	}
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

// routerRoute is the router's own default route of one family: multipath
// over the usable uplinks of the best tier, weighted. With none usable
// there is no route, and the router's traffic falls through to the main
// table, as without wanpin.
func routerRoute(cfg *config.Config, states map[string]UplinkState, tables Tables, f inet.Family) (desired.Route, bool) {
	all := make([]string, len(cfg.Uplinks))
	for i, u := range cfg.Uplinks {
		all[i] = u.Name
	}
	c := choose(cfg, states, all, all, f)
	if len(c.Buckets) == 0 {
		return desired.Route{}, false
	}
	weights := nexthopWeights(c.Buckets)
	r := desired.Route{Family: f, Table: tables.Router}
	for i, b := range c.Buckets {
		u := cfg.Uplinks[uplinkIndex(cfg, b.Mark)]
		fs := states[u.Name].Family(f)
		nh := desired.Nexthop{Interface: u.Interface, Gateway: fs.Gateway, OnLink: fs.OnLink, Weight: weights[i]}
		if len(c.Buckets) == 1 {
			r.Interface, r.Gateway, r.OnLink = nh.Interface, nh.Gateway, nh.OnLink
			return r, true
		}
		r.Nexthops = append(r.Nexthops, nh)
	}
	return r, true
}

func uplinkIndex(cfg *config.Config, mark uint32) int {
	for i := range cfg.Uplinks {
		if cfg.UplinkMark(i) == mark {
			return i
		}
	}
	return -1
}

// nexthopWeights scales weights (1..1000) to what a nexthop takes
// (1..256), keeping their ratios as closely as that allows.
func nexthopWeights(bs []desired.Bucket) []int {
	g, top := 0, 0
	for _, b := range bs {
		g = gcdInt(g, b.Weight)
		top = max(top, b.Weight)
	}
	out := make([]int, len(bs))
	for i, b := range bs {
		w := b.Weight / g
		if top/g > 256 {
			w = max(1, (b.Weight*256+top/2)/top)
		}
		out[i] = w
	}
	return out
}

func gcdInt(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
