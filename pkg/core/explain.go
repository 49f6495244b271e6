package core

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// Outcome is what wanpin's table does to a new connection.
type Outcome string

const (
	// NotRouted: to the router itself, link-local, multicast or broadcast;
	// wanpin's chains leave it alone and the main table decides.
	NotRouted Outcome = "not routed"
	// SocketMark: the socket carries a mark of its own (a health probe,
	// `wanpin exec`, another program's SO_MARK): wanpin leaves it alone.
	SocketMark Outcome = "socket mark"
	// ForeignMark: the router's own packet carries mark bits outside
	// wanpin's mask, another program's (tailscaled's bypass mark,
	// wg-quick's 51820): its ip rules route it, and wanpin neither
	// restores, balances nor pins it.
	ForeignMark Outcome = "foreign mark"
	// Inbound: a connection from the internet, pinned to the uplink it
	// came in on.
	Inbound Outcome = "inbound"
	// Balanced: one of Choices, at random by their shares.
	Balanced Outcome = "balanced"
	// Rejected: a policy with fallback "none" and no candidate up.
	Rejected Outcome = "rejected"
	// MainTable: the connection stays unmarked and the main routing table
	// decides where it leaves; it is then pinned to that uplink.
	MainTable Outcome = "main table"
	// RouterBalanced: the router's own connection takes the multipath
	// route over the usable uplinks (the kernel picks per destination, by
	// a hash of the addresses, weighted as Choices say); it is then pinned
	// to the uplink it left by.
	RouterBalanced Outcome = "router multipath"
	// Resolver: the router's own query to an uplink's resolver, which
	// leaves through that uplink (or fails at once while it is out:
	// Rejected).
	Resolver Outcome = "resolver"
)

// Choice is one uplink a flow may get, with its chance.
type Choice struct {
	Uplink string  `json:"uplink"`
	Mark   uint32  `json:"mark"`
	Share  float64 `json:"share"` // 0..1
}

// Explanation says what wanpin's nftables table does to a new connection.
type Explanation struct {
	Outcome Outcome  `json:"outcome"`
	Policy  string   `json:"policy,omitempty"` // the policy that took it; "" when none did
	Choices []Choice `json:"choices,omitempty"`
	// Fallback: the policy's candidates are all down, and its fallback
	// "any" handed the connection to the default balancing.
	Fallback bool `json:"fallback,omitempty"`
	// SourcePrefix: an IPv6 source in an uplink's prefix6 (nat6 none)
	// chose that uplink, the only entry of Choices.
	SourcePrefix netip.Prefix `json:"source_prefix,omitzero"`
	// Sticky: the balancer remembered the source (sticky), and gave it
	// the uplink it gave the source's last new connection.
	Sticky *StickyHit `json:"sticky,omitempty"`
	// Learned: the policy matched a destination learned from a DNS
	// answer for one of its domains.
	Learned *LearnedHit `json:"learned,omitempty"`
	// Why: the rule that decided, as a person reads it.
	Why string `json:"why"`
}

// LearnedHit is a destination a domain policy learned.
type LearnedHit struct {
	Name string  `json:"name"`         // the name whose answer gave it
	Left Seconds `json:"left_seconds"` // until it stops steering new connections, unless answered again
}

// StickyHit is a sticky balancer's memory of one source.
type StickyHit struct {
	Uplink string  `json:"uplink"`
	Left   Seconds `json:"left_seconds"` // until it forgets, unless a new connection comes first
}

// StickyLookup answers whether the balancer of policy ("" for the default
// balancing) remembers src (and dst, for sticky_by "source+destination")
// for the uplink of mark, and for how long still. The kernel holds the
// memory; the daemon reads it.
type StickyLookup func(policy string, f inet.Family, mark uint32, src, dst netip.Addr) (time.Duration, bool)

// Explain evaluates the desired state for a new connection: the nftables
// table in the chain order pkg/rules lays out (layout.md), with the same
// compiled policy conditions, and for the router's own traffic that the
// table leaves unmarked, the ip rules wanpin installs. Explain cannot
// drift from what the kernel is told. types answers the kernel's type of
// the destination address (`fib daddr type`), which only the kernel
// knows; nil: what the address says by itself (AddrTypeOf).
func Explain(d desired.State, f policy.Flow, types AddrTypes) Explanation {
	return NewExplainer(d).Explain(f, types)
}

// Explainer explains flows against one desired state, with its policies
// compiled once: an Explain costs the evaluation of one flow, not the
// compilation of every policy (the daemon keeps one per published
// state, so a caller cannot make it compile 10,000 policies a call).
type Explainer struct {
	d     desired.State
	progs policy.Hooks
}

// NewExplainer compiles d's policies the way pkg/rules lays them out.
func NewExplainer(d desired.State) *Explainer {
	comps := make([]policy.Compiled, len(d.NFT.Policies))
	for i, p := range d.NFT.Policies {
		comps[i] = policy.Compile(p.Name, p.Match)
	}
	return &Explainer{d: d, progs: policy.Build(comps)}
}

// Explain is the package's Explain for the Explainer's state.
func (x *Explainer) Explain(f policy.Flow, types AddrTypes) Explanation {
	return x.ExplainSticky(f, types, nil)
}

// ExplainSticky is Explain with the sticky balancers' memory (nil: none
// remembered).
func (x *Explainer) ExplainSticky(f policy.Flow, types AddrTypes, sticky StickyLookup) Explanation {
	d := x.d
	e := x.explainNFT(f, types)
	e = stickyOutcome(d.NFT, f, e, sticky)
	if f.Local && e.Outcome == MainTable {
		// Unmarked: the ip rules decide.
		r := explainRouting(d, f, e)
		r.Policy = e.Policy
		return r
	}
	return e
}

// routerRule is the router's own `iif lo lookup <router table>` of the
// family, if router_traffic = "balance" installed one.
func (x *Explainer) routerRule(fam inet.Family) (desired.Rule, bool) {
	for _, r := range x.d.Routing.Rules {
		if r.Family == fam && r.Iif == "lo" && !r.Dst.IsValid() && r.Table != 0 {
			return r, true
		}
	}
	return desired.Rule{}, false
}

func (x *Explainer) explainNFT(f policy.Flow, types AddrTypes) Explanation {
	nft := x.d.NFT
	fam := f.Family()
	byMark := map[uint32]desired.Uplink{}
	for _, u := range nft.Uplinks {
		byMark[u.Mark] = u
	}
	if f.Local {
		// chain output: another program's mark is left to its rules.
		if other := f.Mark &^ nft.Mask; other != 0 {
			why := fmt.Sprintf("mark %#x has bits %#x outside wanpin's mask %#x: another program's; wanpin's table leaves it alone and the ip rules route it", f.Mark, other, nft.Mask)
			if r, ok := x.routerRule(fam); ok {
				// `iif lo lookup <router table>` tests no mark: that
				// program's rules decide only if they come first.
				why += fmt.Sprintf(", wanpin's rule %d (the router's own traffic, balanced) before any of that program's with a later priority", r.Priority)
			}
			return Explanation{Outcome: ForeignMark, Why: why}
		}
		// A socket that chose an uplink keeps it.
		if m := f.Mark & nft.Mask; m != 0 {
			e := Explanation{Outcome: SocketMark, Why: "the socket's own mark"}
			if u, ok := byMark[m]; ok {
				e.Choices = []Choice{{Uplink: u.Name, Mark: m, Share: 1}}
			}
			return e
		}
	} else {
		// chain prerouting: new from the internet is pinned where it came in.
		for _, u := range nft.Uplinks {
			if !u.NoGateway && u.Interface == f.InIface {
				return Explanation{Outcome: Inbound, Choices: []Choice{{Uplink: u.Name, Mark: u.Mark, Share: 1}},
					Why: "came in on uplink " + u.Name}
			}
		}
	}
	if why := notRouted(f.Dst, types); why != "" {
		return Explanation{Outcome: NotRouted, Why: why}
	}
	prog := x.progs[policy.Forwarded]
	if f.Local {
		prog = x.progs[policy.Local]
	}
	if i, ok := prog.Match(f); ok {
		p := nft.Policies[i]
		e := Explanation{Policy: p.Name}
		c := p.Balancer.For(fam)
		switch {
		case len(c.Buckets) > 0:
			e.Outcome, e.Choices, e.Why = Balanced, shares(c, byMark), "policy "+p.Name
			return e
		case c.Reject:
			e.Outcome, e.Why = Rejected, "policy "+p.Name+": no candidate is up and fallback is \"none\""+rejectWhere(nft)
			return e
		case c.FallbackDefault:
			d := balanceDefault(nft, f, byMark)
			d.Policy, d.Fallback = p.Name, true
			d.Why = "policy " + p.Name + ": no candidate is up, fallback \"any\": " + d.Why
			return d
		}
		e.Outcome, e.Why = MainTable, "policy "+p.Name+" chooses no uplink"
		return e
	}
	if f.Local {
		// The output chain has no default balancing: the routing decision
		// stands, and postrouting pins the connection to where it left.
		return Explanation{Outcome: MainTable, Why: "the router's own traffic that no policy matches"}
	}
	return balanceDefault(nft, f, byMark)
}

// balanceDefault is bal_default_chain: the source prefix of a nat6 none
// uplink, then the default balancer.
func balanceDefault(nft desired.NFT, f policy.Flow, byMark map[uint32]desired.Uplink) Explanation {
	if inet.Of(f.Src) == inet.IPv6 {
		for _, sp := range nft.Source6 {
			if sp.Prefix.Contains(f.Src) {
				return Explanation{Outcome: Balanced, SourcePrefix: sp.Prefix,
					Choices: []Choice{{Uplink: byMark[sp.Mark].Name, Mark: sp.Mark, Share: 1}},
					Why:     "source in " + byMark[sp.Mark].Name + "'s prefix6 " + sp.Prefix.String() + " (nat6 none)"}
			}
		}
	}
	c := nft.Default.For(f.Family())
	switch {
	case len(c.Buckets) > 0:
		return Explanation{Outcome: Balanced, Choices: shares(c, byMark), Why: "default balancing"}
	case c.Reject:
		return Explanation{Outcome: Rejected, Why: "default balancing rejects" + rejectWhere(nft)}
	}
	return Explanation{Outcome: MainTable, Why: "no uplink is up"}
}

// rejectWhere says what a reject refuses: with a RejectMark, only what
// the routing sends out of an uplink (pkg/rules rejectTerminal).
func rejectWhere(nft desired.NFT) string {
	if nft.RejectMark == 0 {
		return ""
	}
	return ": refused where it would leave by an uplink; the main table's routes to a LAN or a VPN still take it"
}

func shares(c desired.Choice, byMark map[uint32]desired.Uplink) []Choice {
	total := 0
	for _, b := range c.Buckets {
		total += b.Weight
	}
	var out []Choice
	for _, b := range c.Buckets {
		out = append(out, Choice{Uplink: byMark[b.Mark].Name, Mark: b.Mark, Share: float64(b.Weight) / float64(total)})
	}
	return out
}

// notRouted says why wanpin's chains return before any policy for a
// destination, "" when they do not. The chains' returns, both hooks:
// `ip6 daddr fe80::/10` and `ff00::/8` by the address; `fib daddr type
// local` (prerouting) and `fib daddr type { local, broadcast, multicast
// }` (output) by the kernel's type of the address, asked only when the
// address itself does not decide. Prerouting's `meta pkttype != host`
// is the link layer's: a host sends to a broadcast or multicast address
// in a broadcast or multicast frame, so there the kernel's broadcast
// and multicast types stand for it.
func notRouted(dst netip.Addr, types AddrTypes) string {
	if inet.Of(dst) == inet.IPv6 && dst.IsLinkLocalUnicast() {
		return "link-local: never policy-routed"
	}
	t := AddrTypeOf(dst)
	if t == AddrUnicast && types != nil {
		t = types(dst)
	}
	switch t {
	case AddrLocal:
		return "to the router itself"
	case AddrBroadcast:
		return "broadcast: never policy-routed"
	case AddrMulticast:
		return "multicast: never policy-routed"
	}
	return ""
}

// explainRouting follows wanpin's ip rules for the router's own unmarked
// traffic: a resolver's rule, then the router's multipath table; what
// they leave goes on to the main table.
func explainRouting(d desired.State, f policy.Flow, e Explanation) Explanation {
	fam := f.Family()
	byMark := map[uint32]desired.Uplink{}
	for _, u := range d.NFT.Uplinks {
		byMark[u.Mark] = u
	}
	uplinkOfTable := map[int]desired.Uplink{}
	for _, r := range d.Routing.Rules {
		if r.Family == fam && r.Mask != 0 && r.Mark != 0 && r.Iif == "" {
			if u, ok := byMark[r.Mark]; ok {
				uplinkOfTable[r.Table] = u
			}
		}
	}
	rules := slices.Clone(d.Routing.Rules)
	slices.SortStableFunc(rules, func(a, b desired.Rule) int { return a.Priority - b.Priority })
	for _, r := range rules {
		if r.Family != fam || r.Iif != "lo" || r.Suppress {
			continue
		}
		if r.Dst.IsValid() {
			if !r.Dst.Contains(f.Dst) || (r.Mask != 0 && f.Mark&r.Mask != r.Mark) {
				continue
			}
			u := uplinkOfTable[r.Table]
			if r.Action == desired.Unreachable {
				return Explanation{Outcome: Rejected, Why: "a resolver of an uplink that is out: the lookup fails at once"}
			}
			return Explanation{Outcome: Resolver, Choices: []Choice{{Uplink: u.Name, Mark: u.Mark, Share: 1}},
				Why: "the router's query to " + u.Name + "'s resolver leaves through " + u.Name}
		}
		for _, rt := range d.Routing.Routes {
			if rt.Family != fam || rt.Table != r.Table || rt.Type != desired.Unicast {
				continue
			}
			out := Explanation{Outcome: RouterBalanced, Why: "the router's own traffic that no policy matches: the multipath route over the usable uplinks"}
			hops := rt.Nexthops
			if len(hops) == 0 {
				hops = []desired.Nexthop{{Interface: rt.Interface, Weight: 1}}
			}
			total := 0
			for _, nh := range hops {
				total += nh.Weight
			}
			for _, nh := range hops {
				for _, u := range d.NFT.Uplinks {
					if u.Interface == nh.Interface {
						out.Choices = append(out.Choices, Choice{Uplink: u.Name, Mark: u.Mark, Share: float64(nh.Weight) / float64(total)})
					}
				}
			}
			return out
		}
	}
	return e
}

// stickyOutcome applies a sticky balancer's memory to a balanced outcome,
// as the balancer's chain does: the lookups come before the choice, one
// per candidate in bucket order, the first that remembers the source
// wins.
func stickyOutcome(nft desired.NFT, f policy.Flow, e Explanation, sticky StickyLookup) Explanation {
	if e.Outcome != Balanced || e.SourcePrefix.IsValid() {
		// Not balanced; or the source prefix (nat6 none) decided
		// before any memory.
		return e
	}
	bal := nft.Default
	if e.Policy != "" && !e.Fallback {
		i := slices.IndexFunc(nft.Policies, func(p desired.Policy) bool { return p.Name == e.Policy })
		if i < 0 {
			return e
		}
		bal = nft.Policies[i].Balancer
	}
	st := bal.Sticky
	if !st.On() {
		return e
	}
	pol := e.Policy
	if e.Fallback {
		pol = ""
	}
	dst := netip.Addr{}
	if st.ByDestination {
		dst = f.Dst
	}
	by := "source"
	if st.ByDestination {
		by = "source and destination"
	}
	if sticky != nil {
		for _, c := range e.Choices {
			if left, ok := sticky(pol, f.Family(), c.Mark, f.Src, dst); ok {
				e.Choices = []Choice{{Uplink: c.Uplink, Mark: c.Mark, Share: 1}}
				e.Sticky = &StickyHit{Uplink: c.Uplink, Left: Seconds(left.Seconds())}
				e.Why += fmt.Sprintf("; sticky: this %s's last new connection took %s (remembered %s more)", by, c.Uplink, left.Round(time.Second))
				return e
			}
		}
	}
	e.Why += fmt.Sprintf("; sticky %s: the uplink it gets is remembered for this %s", st.Timeout, by)
	return e
}
