package plan

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/rules"
	"github.com/wanpin/wanpin/pkg/tables"
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
			{Name: "office", Destinations: []netip.Prefix{netip.MustParsePrefix("2001:db8:ff::/64")},
				Uplinks: []string{"dsl"}, FallbackNone: true},
		},
	}
}

func dual(v4, v6 bool) UplinkState {
	var s UplinkState
	if v4 {
		s.V4 = FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.2")}, Gateway: netip.MustParseAddr("198.51.100.1")}
	}
	if v6 {
		s.V6 = FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8:101::2")}, Gateway: netip.MustParseAddr("fe80::1")}
	}
	return s
}

func TestFamiliesBalanceApart(t *testing.T) {
	cfg := dualConfig()
	// dsl lost IPv6 only: it still takes IPv4, not IPv6.
	st := map[string]UplinkState{"fibre": dual(true, true), "dsl": dual(true, false)}
	d := Build(Input{Config: cfg, Uplinks: st})
	b := d.NFT.Default
	if want := []rules.Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x20000, Weight: 1}}; !reflect.DeepEqual(b.For(false).Buckets, want) {
		t.Errorf("IPv4 buckets %v, want %v", b.For(false).Buckets, want)
	}
	if want := []rules.Bucket{{Mark: 0x10000, Weight: 2}}; !reflect.DeepEqual(b.For(true).Buckets, want) {
		t.Errorf("IPv6 buckets %v, want %v", b.For(true).Buckets, want)
	}
	// office's only uplink has no IPv6: IPv6 to the office is refused,
	// IPv4 is not.
	pb := d.NFT.Policies[0].Balancer
	if !pb.For(true).Reject || pb.For(false).Reject || len(pb.For(false).Buckets) != 1 {
		t.Errorf("office balancer %+v / v6 %+v", pb.Choice, pb.For(true))
	}
	// The IPv6 routes of dsl's table are gone, its IPv4 route stays.
	var v4route, v6route bool
	for _, r := range d.Tables.Routes {
		if r.Table == 201 && r.Type == tables.Unicast {
			v4route = v4route || r.Family == tables.V4
			v6route = v6route || r.Family == tables.V6
		}
	}
	if !v4route || v6route {
		t.Errorf("dsl routes: IPv4 %v (want true), IPv6 %v (want false)", v4route, v6route)
	}
	// Same balancing for both families: one choice, no IPv6 override.
	st["dsl"] = dual(true, true)
	if d := Build(Input{Config: cfg, Uplinks: st}); d.NFT.Default.V6 != nil {
		t.Errorf("families balance alike but V6 set: %+v", d.NFT.Default.V6)
	}
}

func TestUnhealthyFamilyOnly(t *testing.T) {
	st := map[string]UplinkState{"fibre": dual(true, true), "dsl": dual(true, true)}
	f := st["fibre"]
	f.V6.Unhealthy = true
	st["fibre"] = f
	d := Build(Input{Config: dualConfig(), Uplinks: st})
	if got := d.NFT.Default.For(false).Buckets; len(got) != 2 {
		t.Errorf("IPv4 lost an uplink: %v", got)
	}
	if got := d.NFT.Default.For(true).Buckets; len(got) != 1 || got[0].Mark != 0x20000 {
		t.Errorf("IPv6 buckets %v, want dsl only", got)
	}
	if len(d.NFT.Source6) != 0 {
		t.Errorf("fibre's prefix still chooses it while its IPv6 is unhealthy: %v", d.NFT.Source6)
	}
}

func TestSourcePrefixChoosesUplink(t *testing.T) {
	st := map[string]UplinkState{"fibre": dual(true, true), "dsl": dual(true, true)}
	cfg := dualConfig()
	d := Build(Input{Config: cfg, Uplinks: st})
	want := []rules.SourcePrefix{{Prefix: netip.MustParsePrefix("2001:db8:d1::/56"), Mark: 0x10000}}
	if !reflect.DeepEqual(d.NFT.Source6, want) {
		t.Errorf("Source6 %v, want %v", d.NFT.Source6, want)
	}
	if d.NFT.Uplinks[1].NAT6 != rules.NAT6Prefix || d.NFT.LANPrefix6 != cfg.LANPrefix6 {
		t.Errorf("dsl nat6 %q, LAN prefix %v", d.NFT.Uplinks[1].NAT6, d.NFT.LANPrefix6)
	}
	if err := d.NFT.Validate(); err != nil {
		t.Fatal(err)
	}

	e := Explain(cfg, st, Flow{Src: netip.MustParseAddr("2001:db8:d1::10"), Dst: netip.MustParseAddr("2001:db8:fe::10")})
	if e.SourcePrefix.String() != "2001:db8:d1::/56" || len(e.Choices) != 1 || e.Choices[0].Uplink != "fibre" {
		t.Errorf("explain by source prefix: %+v", e)
	}
	// A policy comes before the source prefix.
	e = Explain(cfg, st, Flow{Src: netip.MustParseAddr("2001:db8:d1::10"), Dst: netip.MustParseAddr("2001:db8:ff::10")})
	if e.Policy != "office" || len(e.Choices) != 1 || e.Choices[0].Uplink != "dsl" {
		t.Errorf("explain policy over source prefix: %+v", e)
	}
	for _, dst := range []string{"fe80::1", "ff02::1:2", "ff02::2"} {
		if e := Explain(cfg, st, Flow{Dst: netip.MustParseAddr(dst), Local: true}); !e.NotRouted || len(e.Choices) != 0 {
			t.Errorf("%s: %+v, want not policy-routed", dst, e)
		}
	}
}
