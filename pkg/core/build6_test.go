package core

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

func dualConfig() *config.Config {
	return &config.Config{
		MarkMask: 0x00ff0000, RulePriority: 10000,
		LANPrefix6: netip.MustParsePrefix("2001:db8:1::/64"),
		Uplinks: []config.Uplink{
			{Name: "fibre", Interface: "wan1", Weight: 2, Tier: 1, Table: 200, Masquerade: true,
				Nat6: config.Nat6None, Prefix6: netip.MustParsePrefix("2001:db8:d1::/56")},
			{Name: "dsl", Interface: "wan2", Weight: 1, Tier: 1, Table: 201, Masquerade: true,
				Nat6: config.Nat6Prefix, Prefix6: netip.MustParsePrefix("2001:db8:d2::/64")},
		},
		Policies: []config.Policy{
			{Name: "office", Match: policy.Match{Destinations: []netip.Prefix{netip.MustParsePrefix("2001:db8:ff::/64")}},
				Uplinks: []string{"dsl"}, FallbackNone: true},
		},
	}
}

// dual is an uplink whose families are up as asked.
func dual(fams ...inet.Family) UplinkState {
	var s UplinkState
	for _, f := range fams {
		if f == inet.IPv4 {
			*s.Of(f) = FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.2")}, Gateway: netip.MustParseAddr("198.51.100.1")}
		} else {
			*s.Of(f) = FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8:101::2")}, Gateway: netip.MustParseAddr("fe80::1")}
		}
	}
	return s
}

func TestFamiliesBalanceApart(t *testing.T) {
	cfg := dualConfig()
	// dsl lost IPv6 only: it still takes IPv4, not IPv6.
	st := map[string]UplinkState{"fibre": dual(inet.IPv4, inet.IPv6), "dsl": dual(inet.IPv4)}
	d := Build(Facts{Config: cfg, Uplinks: st})
	b := d.NFT.Default
	if want := []desired.Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x20000, Weight: 1}}; !reflect.DeepEqual(b.For(inet.IPv4).Buckets, want) {
		t.Errorf("IPv4 buckets %v, want %v", b.For(inet.IPv4).Buckets, want)
	}
	if want := []desired.Bucket{{Mark: 0x10000, Weight: 2}}; !reflect.DeepEqual(b.For(inet.IPv6).Buckets, want) {
		t.Errorf("IPv6 buckets %v, want %v", b.For(inet.IPv6).Buckets, want)
	}
	// office's only uplink has no IPv6: IPv6 to the office is refused,
	// IPv4 is not.
	pb := d.NFT.Policies[0].Balancer
	if !pb.For(inet.IPv6).Reject || pb.For(inet.IPv4).Reject || len(pb.For(inet.IPv4).Buckets) != 1 {
		t.Errorf("office balancer %+v", pb)
	}
	// The IPv6 routes of dsl's table are gone, its IPv4 route stays.
	var v4route, v6route bool
	for _, r := range d.Routing.Routes {
		if r.Table == 201 && r.Type == desired.Unicast {
			v4route = v4route || r.Family == inet.IPv4
			v6route = v6route || r.Family == inet.IPv6
		}
	}
	if !v4route || v6route {
		t.Errorf("dsl routes: IPv4 %v (want true), IPv6 %v (want false)", v4route, v6route)
	}
	// Same balancing for both families: one choice for both.
	st["dsl"] = dual(inet.IPv4, inet.IPv6)
	if d := Build(Facts{Config: cfg, Uplinks: st}); !d.NFT.Default.Same() {
		t.Errorf("families balance alike but differ: %+v", d.NFT.Default)
	}
}

func TestUnhealthyFamilyOnly(t *testing.T) {
	st := map[string]UplinkState{"fibre": dual(inet.IPv4, inet.IPv6), "dsl": dual(inet.IPv4, inet.IPv6)}
	f := st["fibre"]
	f.Of(inet.IPv6).Unhealthy = true
	st["fibre"] = f
	d := Build(Facts{Config: dualConfig(), Uplinks: st})
	if got := d.NFT.Default.For(inet.IPv4).Buckets; len(got) != 2 {
		t.Errorf("IPv4 lost an uplink: %v", got)
	}
	if got := d.NFT.Default.For(inet.IPv6).Buckets; len(got) != 1 || got[0].Mark != 0x20000 {
		t.Errorf("IPv6 buckets %v, want dsl only", got)
	}
	if len(d.NFT.Source6) != 0 {
		t.Errorf("fibre's prefix still chooses it while its IPv6 is unhealthy: %v", d.NFT.Source6)
	}
}

func TestSourcePrefixChoosesUplink(t *testing.T) {
	st := map[string]UplinkState{"fibre": dual(inet.IPv4, inet.IPv6), "dsl": dual(inet.IPv4, inet.IPv6)}
	cfg := dualConfig()
	d := Build(Facts{Config: cfg, Uplinks: st})
	want := []desired.SourcePrefix{{Prefix: netip.MustParsePrefix("2001:db8:d1::/56"), Mark: 0x10000}}
	if !reflect.DeepEqual(d.NFT.Source6, want) {
		t.Errorf("Source6 %v, want %v", d.NFT.Source6, want)
	}
	if d.NFT.Uplinks[1].NAT6 != desired.NAT6Prefix || d.NFT.LANPrefix6 != cfg.LANPrefix6 {
		t.Errorf("dsl nat6 %q, LAN prefix %v", d.NFT.Uplinks[1].NAT6, d.NFT.LANPrefix6)
	}

	e := Explain(d, policy.Flow{Src: netip.MustParseAddr("2001:db8:d1::10"), Dst: netip.MustParseAddr("2001:db8:fe::10")}, nil)
	if e.SourcePrefix.String() != "2001:db8:d1::/56" || len(e.Choices) != 1 || e.Choices[0].Uplink != "fibre" {
		t.Errorf("explain by source prefix: %+v", e)
	}
	// A policy comes before the source prefix.
	e = Explain(d, policy.Flow{Src: netip.MustParseAddr("2001:db8:d1::10"), Dst: netip.MustParseAddr("2001:db8:ff::10")}, nil)
	if e.Policy != "office" || len(e.Choices) != 1 || e.Choices[0].Uplink != "dsl" {
		t.Errorf("explain policy over source prefix: %+v", e)
	}
	for _, dst := range []string{"fe80::1", "ff02::1:2", "ff02::2"} {
		if e := Explain(d, policy.Flow{Dst: netip.MustParseAddr(dst), Local: true}, nil); e.Outcome != NotRouted || len(e.Choices) != 0 {
			t.Errorf("%s: %+v, want not policy-routed", dst, e)
		}
	}
}
