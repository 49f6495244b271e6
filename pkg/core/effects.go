package core

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/quota"
)

// Effect is one thing the executor must do, in the order Step lists them.
// String is the effect as the step tests compare it.
type Effect interface {
	fmt.Stringer
	effect()
}

// Log is one log line: a transition with its reason, a refusal, a repair.
type Log struct {
	Level slog.Level
	Msg   string
	Attrs []any // key, value pairs as slog takes them
}

// SetSysctl writes one sysctl (Key is the path under /proc/sys).
type SetSysctl struct{ Key, Value string }

// LoosenRPFilter makes an uplink's reverse-path filter loose (2) where
// it is strict (1) in effect, the maximum of "all" and the interface's:
// replies arrive on the uplink their connection is pinned to, which is
// often not the one the main table would route back through. Off (0)
// and loose stay as they are: raising 0 to 2 would cost every packet
// arriving from the uplink a reverse FIB lookup through the whole rule
// list.
type LoosenRPFilter struct{ Interface string }

// ApplyNFT replaces wanpin's nftables table.
type ApplyNFT struct{ NFT desired.NFT }

// ApplyRouting brings wanpin's rules and routes to Routing.
type ApplyRouting struct{ Routing desired.Routing }

// ApplyMPTCP brings wanpin's MPTCP endpoints and the limits to MPTCP.
type ApplyMPTCP struct{ MPTCP desired.MPTCP }

// FlushMark deletes the conntrack entries of one family pinned to an
// uplink (ct mark & Mask == Mark): it went down, or they were pinned to it
// while it was down.
type FlushMark struct {
	Uplink     string
	Family     inet.Family
	Mark, Mask uint32
	Reason     string
}

// MarkMove is what a reload does to one uplink's connections: pinned
// with Old (under the old mask), they get New; New 0: the uplink was
// removed, and they are flushed.
type MarkMove struct {
	Uplink   string
	Old, New uint32
}

// Repin carries the connections pinned by an earlier configuration over
// a reload that changed their marks (mark_mask, or an uplink's place in
// the file, which gives its mark): without it the new table would not
// know them, or take them for another uplink's. Moves are the uplinks
// whose mark or mask changed, by name, in file order, then the removed
// ones.
type Repin struct {
	OldMask, NewMask uint32
	Moves            []MarkMove
}

// Failback moves a worse tier's connections of one family off its
// uplink (failback = "move") now that To, of a better tier, is back:
// UDP and other entries are deleted, so their next packet is balanced
// afresh; TCP entries get the ct mark Evict, whose next packet the table
// turns into a reset (the application reconnects at once, over To).
type Failback struct {
	Uplink, To        string
	Family            inet.Family
	Mark, Mask, Evict uint32
	Reason            string // for the log: why they move
}

// SaveQuota writes the quotas' counts to the state file (pkg/quota).
type SaveQuota struct{ Usage map[string]quota.Usage }

// FlushAddr deletes the conntrack entries source-NATed to an address the
// uplink lost (a PPP re-dial, a new DHCP lease).
type FlushAddr struct {
	Uplink string
	Addr   netip.Addr
}

// RunHooks runs the transition hooks for one uplink transition.
type RunHooks struct{ Uplink, Interface, State, Reason string }

// Notify tells systemd (READY=1, RELOADING=1, STOPPING=1).
type Notify struct{ State string }

// ProbeSpec is one health monitor wanpin wants running: one family of one
// uplink, probed through the uplink's interface with its mark.
type ProbeSpec struct {
	Key
	Interface string
	Mark      uint32
	Config    config.HealthConfig // that family's targets only
}

// StartProbes starts a health monitor.
type StartProbes struct{ Spec ProbeSpec }

// StopProbes stops one; its verdicts are forgotten.
type StopProbes struct{ Key Key }

// RetryAfter asks for a Retry input after a while (an apply failed).
type RetryAfter struct{ After time.Duration }

// ObserveAfter asks for an Observed input after a while (a fresh look at
// the interfaces), replacing an earlier request: a PPP ip-down that
// nothing confirms expires then (DownHintHold).
type ObserveAfter struct{ After time.Duration }

// Teardown removes everything wanpin installed (SIGTERM).
type Teardown struct{}

func (Log) effect()            {}
func (SetSysctl) effect()      {}
func (LoosenRPFilter) effect() {}
func (Failback) effect()       {}
func (Repin) effect()          {}
func (SaveQuota) effect()      {}
func (ApplyNFT) effect()       {}
func (ApplyRouting) effect()   {}
func (ApplyMPTCP) effect()     {}
func (FlushMark) effect()      {}
func (FlushAddr) effect()      {}
func (RunHooks) effect()       {}
func (Notify) effect()         {}
func (StartProbes) effect()    {}
func (StopProbes) effect()     {}
func (RetryAfter) effect()     {}
func (ObserveAfter) effect()   {}
func (Teardown) effect()       {}

func (e Log) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log %s %q", strings.ToLower(e.Level.String()), e.Msg)
	for i := 0; i+1 < len(e.Attrs); i += 2 {
		fmt.Fprintf(&b, " %v=%q", e.Attrs[i], fmt.Sprint(e.Attrs[i+1]))
	}
	return b.String()
}
func (e SetSysctl) String() string { return fmt.Sprintf("sysctl %s=%s", e.Key, e.Value) }
func (e Failback) String() string {
	return fmt.Sprintf("failback %s %v to %s: mark %#x/%#x, TCP to %#x (%s)", e.Uplink, e.Family, e.To, e.Mark, e.Mask, e.Evict, e.Reason)
}
func (e Repin) String() string {
	var parts []string
	for _, m := range e.Moves {
		if m.New == 0 {
			parts = append(parts, fmt.Sprintf("%s %#x flushed (removed)", m.Uplink, m.Old))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %#x->%#x", m.Uplink, m.Old, m.New))
	}
	return fmt.Sprintf("repin conntrack mask %#x->%#x: %s", e.OldMask, e.NewMask, strings.Join(parts, ", "))
}
func (e SaveQuota) String() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(e.Usage)) {
		u := e.Usage[name]
		parts = append(parts, fmt.Sprintf("%s %d bytes since %s", name, u.Used, u.PeriodStart.Format(time.RFC3339)))
	}
	return "save quota: " + strings.Join(parts, ", ")
}
func (e LoosenRPFilter) String() string {
	return fmt.Sprintf("loosen rp_filter of %s (to 2 where it is 1)", e.Interface)
}

// String shows what the table chooses, not the whole table: the step
// tests pin decisions; the table's text is pinned by pkg/rules' goldens.
func (e ApplyNFT) String() string {
	var b strings.Builder
	b.WriteString("apply nftables: default " + balancerText(e.NFT, e.NFT.Default))
	for _, p := range e.NFT.Policies {
		fmt.Fprintf(&b, "; %s %s", p.Name, balancerText(e.NFT, p.Balancer))
	}
	for _, sp := range e.NFT.Source6 {
		fmt.Fprintf(&b, "; src6 %s->%s", sp.Prefix, uplinkOf(e.NFT, sp.Mark))
	}
	return b.String()
}
func (e ApplyMPTCP) String() string {
	if !e.MPTCP.Enabled {
		return "apply mptcp: off"
	}
	var eps []string
	for _, ep := range e.MPTCP.Endpoints {
		s := ep.Uplink + " " + ep.Addr.String()
		if ep.Backup {
			s += " backup"
		}
		eps = append(eps, s)
	}
	return fmt.Sprintf("apply mptcp: %d uplinks, endpoints [%s]", e.MPTCP.Uplinks, strings.Join(eps, ", "))
}
func (e ApplyRouting) String() string {
	var routes []string
	for _, r := range e.Routing.Routes {
		if r.Type != desired.Unicast {
			continue
		}
		if len(r.Nexthops) == 0 {
			routes = append(routes, fmt.Sprintf("%d %v", r.Table, r))
			continue
		}
		var hops []string
		for _, nh := range r.Nexthops {
			h := nh.Interface
			if nh.Gateway.IsValid() {
				h += " via " + nh.Gateway.String()
			}
			hops = append(hops, fmt.Sprintf("%s weight %d", h, nh.Weight))
		}
		routes = append(routes, fmt.Sprintf("%d %v default multipath %s", r.Table, r.Family, strings.Join(hops, " + ")))
	}
	var from, to []string
	for _, r := range e.Routing.Rules {
		if r.Src.IsValid() {
			from = append(from, r.Src.Addr().String())
		}
		if r.Dst.IsValid() {
			if r.Action == desired.Unreachable {
				to = append(to, r.Dst.Addr().String()+" unreachable")
			} else {
				to = append(to, fmt.Sprintf("%s table %d", r.Dst.Addr(), r.Table))
			}
		}
	}
	out := fmt.Sprintf("apply routing: %d rules, routes [%s], from [%s]", len(e.Routing.Rules),
		strings.Join(routes, ", "), strings.Join(from, " "))
	if len(to) > 0 {
		out += ", resolvers [" + strings.Join(to, ", ") + "]"
	}
	return out
}
func (e FlushMark) String() string {
	return fmt.Sprintf("flush conntrack %s %v mark %#x/%#x (%s)", e.Uplink, e.Family, e.Mark, e.Mask, e.Reason)
}
func (e FlushAddr) String() string {
	return fmt.Sprintf("flush conntrack %s NATed to %s", e.Uplink, e.Addr)
}
func (e RunHooks) String() string {
	return fmt.Sprintf("hooks %s %s %s: %s", e.Uplink, e.Interface, e.State, e.Reason)
}
func (e Notify) String() string { return "notify " + e.State }
func (e StartProbes) String() string {
	var ts []string
	for _, t := range e.Spec.Config.Targets {
		ts = append(ts, t.Text)
	}
	return fmt.Sprintf("start probes %s %v %s mark %#x %s [%s]", e.Spec.Uplink, e.Spec.Family, e.Spec.Interface,
		e.Spec.Mark, e.Spec.Config.Method, strings.Join(ts, " "))
}
func (e StopProbes) String() string {
	return fmt.Sprintf("stop probes %s %v", e.Key.Uplink, e.Key.Family)
}
func (e RetryAfter) String() string   { return "retry after " + e.After.String() }
func (e ObserveAfter) String() string { return "observe after " + e.After.String() }
func (Teardown) String() string       { return "teardown" }

func uplinkOf(nft desired.NFT, mark uint32) string {
	for _, u := range nft.Uplinks {
		if u.Mark == mark {
			return u.Name
		}
	}
	return fmt.Sprintf("%#x", mark)
}

func choiceText(nft desired.NFT, c desired.Choice) string {
	switch {
	case len(c.Buckets) > 0:
		var parts []string
		for _, bk := range c.Buckets {
			parts = append(parts, fmt.Sprintf("%s:%d", uplinkOf(nft, bk.Mark), bk.Weight))
		}
		return strings.Join(parts, ",")
	case c.Reject:
		return "reject"
	case c.FallbackDefault:
		return "fallback"
	}
	return "main"
}

func balancerText(nft desired.NFT, b desired.Balancer) string {
	if b.Same() {
		return choiceText(nft, b.V4)
	}
	return "v4 " + choiceText(nft, b.V4) + " v6 " + choiceText(nft, b.V6)
}
