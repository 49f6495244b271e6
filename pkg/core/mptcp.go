package core

import (
	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
)

// buildMPTCP is the endpoints of the uplinks that take part in MPTCP:
// one per address of each family that can carry new connections (the
// addresses the source rules route), the worse tiers' (and those whose
// quota is used up) as backups, so that their subflows carry data only
// while the better ones cannot. A family that goes down loses its
// endpoints: the kernel closes their subflows, and a returning family
// gets them back (see pkg/mptcp for how the connections open subflows
// through them again).
func buildMPTCP(cfg *config.Config, states map[string]UplinkState) desired.MPTCP {
	m := desired.MPTCP{Enabled: cfg.MPTCP}
	if !cfg.MPTCP {
		return m
	}
	best := map[inet.Family]int{}
	for _, u := range cfg.Uplinks {
		st := states[u.Name]
		for _, f := range inet.Families {
			if u.NoMPTCP || !st.Family(f).Usable() || st.Exhausted {
				continue
			}
			if b, ok := best[f]; !ok || u.Tier < b {
				best[f] = u.Tier
			}
		}
	}
	for _, u := range cfg.Uplinks {
		if u.NoMPTCP {
			continue
		}
		m.Uplinks++
		st := states[u.Name]
		for _, f := range inet.Families {
			fs := st.Family(f)
			if !fs.Usable() {
				continue
			}
			b, ok := best[f]
			backup := st.Exhausted || (ok && u.Tier > b)
			for _, a := range fs.Addrs {
				m.Endpoints = append(m.Endpoints, desired.MPTCPEndpoint{Uplink: u.Name, Interface: u.Interface, Addr: a, Backup: backup})
			}
		}
	}
	return m
}
