package health

import (
	"net/netip"
	"net/url"

	"github.com/wanpin/wanpin/pkg/config"
)

// ByFamily splits an uplink's health table by address family: each family
// is probed, judged and taken out of service on its own, so an ISP whose
// IPv6 breaks while IPv4 works loses only its IPv6 traffic. A family
// without targets of its own is nil (its link state alone decides). The
// quorum counts within a family and is capped at its number of targets.
func ByFamily(h config.HealthConfig) (v4, v6 *config.HealthConfig) {
	var t4, t6 []string
	for _, t := range h.Targets {
		if targetIs6(h.Method, t) {
			t6 = append(t6, t)
		} else {
			t4 = append(t4, t)
		}
	}
	part := func(ts []string) *config.HealthConfig {
		if len(ts) == 0 {
			return nil
		}
		c := h
		c.Targets = ts
		c.Quorum = min(max(h.Quorum, 1), len(ts))
		return &c
	}
	return part(t4), part(t6)
}

// targetIs6 tells a target's family from its text (config made sure every
// target holds a literal address).
func targetIs6(method, target string) bool {
	var a netip.Addr
	switch method {
	case "tcp":
		if ap, err := netip.ParseAddrPort(target); err == nil {
			a = ap.Addr()
		}
	case "http":
		if u, err := url.Parse(target); err == nil {
			a, _ = netip.ParseAddr(u.Hostname())
		}
	case "dns":
		if ap, err := dnsServer(target); err == nil {
			a = ap.Addr()
		}
	default:
		a, _ = netip.ParseAddr(target)
	}
	return a.Is6() && !a.Is4In6()
}
