package plan

import (
	"net/netip"

	"github.com/wanpin/wanpin/pkg/config"
)

// Flow describes a new connection, for explaining which policy takes it.
type Flow struct {
	Src, Dst netip.Addr
	Proto    uint8  // 6 tcp, 17 udp, 0 unknown
	DPort    uint16 // 0 unknown
	// Local: the router's own traffic (users, groups and services can
	// match, sources and in_interfaces cannot), with UID and GID.
	Local    bool
	UID, GID uint32
	InIface  string // forwarded traffic: the interface it came in on
}

// Match returns the index of the first policy that takes the flow, or -1
// when none does (the default balancer takes it). It mirrors the
// nftables rules: every matcher a policy has must match. Services cannot
// be evaluated without the process, so a policy naming services never
// matches here.
func Match(cfg *config.Config, f Flow) int {
	for i, p := range cfg.Policies {
		if matches(p, f) {
			return i
		}
	}
	return -1
}

func matches(p config.Policy, f Flow) bool {
	local := len(p.UIDs) > 0 || len(p.GIDs) > 0 || len(p.Services) > 0
	forward := len(p.Sources) > 0 || len(p.InInterfaces) > 0
	if (local && !f.Local) || (forward && f.Local) || len(p.Services) > 0 {
		return false
	}
	if len(p.UIDs) > 0 && !containsU32(p.UIDs, f.UID) {
		return false
	}
	if len(p.GIDs) > 0 && !containsU32(p.GIDs, f.GID) {
		return false
	}
	if len(p.Sources) > 0 && !inPrefixes(p.Sources, f.Src) {
		return false
	}
	if len(p.InInterfaces) > 0 {
		ok := false
		for _, i := range p.InInterfaces {
			ok = ok || i == f.InIface
		}
		if !ok {
			return false
		}
	}
	if len(p.Destinations) > 0 && !inPrefixes(p.Destinations, f.Dst) {
		return false
	}
	if p.Protocol != 0 && p.Protocol != f.Proto {
		return false
	}
	if len(p.Ports) > 0 {
		if f.Proto != 6 && f.Proto != 17 {
			return false
		}
		ok := false
		for _, r := range p.Ports {
			ok = ok || (f.DPort >= r.First && f.DPort <= r.Last)
		}
		if !ok {
			return false
		}
	}
	return true
}

func containsU32(list []uint32, v uint32) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func inPrefixes(list []netip.Prefix, a netip.Addr) bool {
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Choice is one uplink a flow may get, with its chance.
type Choice struct {
	Uplink string
	Mark   uint32
	Share  float64 // 0..1
}

// Explanation says what happens to a new connection.
type Explanation struct {
	Policy     string // "" when no policy matches
	Candidates []string
	Choices    []Choice // empty: rejected, or left to the main table
	Rejected   bool     // fallback = "none" and no candidate is up
	Fallback   bool     // no candidate is up: the default balancer took it
	// SourcePrefix: an IPv6 source in an uplink's prefix6 (nat6 none)
	// chose that uplink, the only entry of Choices.
	SourcePrefix netip.Prefix
	// NotRouted: link-local or multicast; wanpin never policy-routes it.
	NotRouted bool
}

// Explain computes, without the kernel, which policy takes a flow and how
// it would be balanced given the uplinks' states: the same computation
// Build turns into nftables maps, for the flow's address family (its
// destination's, else its source's).
func Explain(cfg *config.Config, states map[string]UplinkState, f Flow) Explanation {
	var e Explanation
	v6 := f.Dst.Is6() && !f.Dst.Is4In6()
	if !f.Dst.IsValid() {
		v6 = f.Src.Is6() && !f.Src.Is4In6()
	}
	if f.Dst.IsValid() && (f.Dst.IsLinkLocalUnicast() || f.Dst.IsMulticast() || f.Dst.IsLinkLocalMulticast()) {
		// The nftables chains return before any policy for these.
		e.NotRouted = true
		return e
	}
	i := Match(cfg, f)
	all := make([]string, len(cfg.Uplinks))
	for k, u := range cfg.Uplinks {
		all[k] = u.Name
	}
	e.Candidates = all
	b := balancer(cfg, states, all).For(v6)
	toDefault := i < 0
	if i >= 0 {
		p := cfg.Policies[i]
		e.Policy = p.Name
		if len(p.Uplinks) > 0 {
			e.Candidates = p.Uplinks
		}
		b = balancer(cfg, states, e.Candidates).For(v6)
		if len(b.Buckets) == 0 {
			if p.FallbackNone {
				e.Rejected = true
				return e
			}
			e.Fallback, toDefault = true, true
			b = balancer(cfg, states, all).For(v6)
		}
	}
	if toDefault && v6 && !f.Local {
		// The default balancer looks at the source prefix first.
		for k, u := range cfg.Uplinks {
			if u.Nat6 == config.Nat6None && states[u.Name].V6.Usable() && u.Prefix6.Contains(f.Src) {
				e.SourcePrefix = u.Prefix6
				e.Choices = []Choice{{Uplink: u.Name, Mark: cfg.UplinkMark(k), Share: 1}}
				return e
			}
		}
	}
	total := 0
	for _, bk := range b.Buckets {
		total += bk.Weight
	}
	for _, bk := range b.Buckets {
		for k, u := range cfg.Uplinks {
			if cfg.UplinkMark(k) == bk.Mark {
				e.Choices = append(e.Choices, Choice{Uplink: u.Name, Mark: bk.Mark, Share: float64(bk.Weight) / float64(total)})
			}
		}
	}
	return e
}
