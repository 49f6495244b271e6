package config

import (
	"testing"

	"github.com/wanpin/wanpin/pkg/inet"
)

func TestForFamily(t *testing.T) {
	cases := []struct {
		method  string
		targets []string
		v4, v6  int
	}{
		{"icmp", []string{"192.0.2.1", "2001:db8::1", "198.51.100.1"}, 2, 1},
		{"tcp", []string{"192.0.2.1:443", "[2001:db8::1]:443"}, 1, 1},
		{"http", []string{"http://[2001:db8::1]/", "http://[2001:db8::2]:8080/x"}, 0, 2},
		{"dns", []string{"192.0.2.53", "[2001:db8::53]:53", "2001:db8::54"}, 1, 2},
	}
	for _, c := range cases {
		h := HealthConfig{Method: c.method, Targets: MustTargets(c.method, c.targets...), Quorum: 2}
		v4, v6 := h.ForFamily(inet.IPv4), h.ForFamily(inet.IPv6)
		n := func(h *HealthConfig) int {
			if h == nil {
				return 0
			}
			if h.Quorum > len(h.Targets) || h.Quorum < 1 {
				t.Errorf("%s: quorum %d of %d targets", c.method, h.Quorum, len(h.Targets))
			}
			return len(h.Targets)
		}
		if n(v4) != c.v4 || n(v6) != c.v6 {
			t.Errorf("%s %v: %d IPv4 and %d IPv6 targets, want %d and %d", c.method, c.targets, n(v4), n(v6), c.v4, c.v6)
		}
	}
}
