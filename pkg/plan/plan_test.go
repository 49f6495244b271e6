package plan

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/rules"
	"github.com/wanpin/wanpin/pkg/tables"
)

func testConfig() *config.Config {
	return &config.Config{
		MarkMask:     0x00ff0000,
		RulePriority: 10000,
		Uplinks: []config.Uplink{
			{Name: "dsl1", Interface: "wan1", Weight: 3, Tier: 1, Table: 200, Masquerade: true},
			{Name: "dsl2", Interface: "wan2", Weight: 1, Tier: 1, Table: 201, Masquerade: true},
			{Name: "lte", Interface: "wwan0", Weight: 1, Tier: 2, Table: 202, Masquerade: true},
		},
		Policies: []config.Policy{
			{Name: "p2p", Sources: []netip.Prefix{netip.MustParsePrefix("192.0.2.20/32")}, Uplinks: []string{"dsl2"}},
			{Name: "voip", Protocol: 17, Ports: []config.PortRange{{First: 5060, Last: 5061}}, Uplinks: []string{"dsl1"}, FallbackNone: true},
			{Name: "backup", Services: []string{"restic.service"}, Uplinks: []string{"lte"}},
		},
	}
}

func up(addr, gw string) UplinkState {
	return UplinkState{V4: FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr(addr)}, Gateway: netip.MustParseAddr(gw)}}
}

func allUp() map[string]UplinkState {
	return map[string]UplinkState{
		"dsl1": up("198.51.100.2", "198.51.100.1"),
		"dsl2": up("198.51.100.10", "198.51.100.9"),
		"lte":  up("198.51.100.18", "198.51.100.17"),
	}
}

func TestBuildIsPure(t *testing.T) {
	in := Input{Config: testConfig(), Uplinks: allUp()}
	if a, b := Build(in), Build(in); !reflect.DeepEqual(a, b) {
		t.Fatal("two builds of one input differ")
	}
}

func TestBalancingByTierAndWeight(t *testing.T) {
	cfg := testConfig()
	st := allUp()
	d := Build(Input{Config: cfg, Uplinks: st})
	want := []rules.Bucket{{Mark: 0x10000, Weight: 3}, {Mark: 0x20000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.Buckets, want) {
		t.Errorf("tier 1 up: default buckets %v, want %v", d.NFT.Default.Buckets, want)
	}
	// Both tier-1 uplinks down: the tier-2 backup takes over.
	delete(st, "dsl1")
	st["dsl2"] = UplinkState{}
	d = Build(Input{Config: cfg, Uplinks: st})
	want = []rules.Bucket{{Mark: 0x30000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.Buckets, want) {
		t.Errorf("tier 1 down: default buckets %v, want %v", d.NFT.Default.Buckets, want)
	}
	// p2p's only candidate is down: fallback any hands it to the default.
	if p := d.NFT.Policies[0].Balancer; len(p.Buckets) != 0 || !p.FallbackDefault || p.Reject {
		t.Errorf("p2p fallback any: %+v", p)
	}
	// voip's only candidate is down with fallback none: reject.
	if p := d.NFT.Policies[1].Balancer; len(p.Buckets) != 0 || !p.Reject {
		t.Errorf("voip fallback none: %+v", p)
	}
}

func TestNothingUp(t *testing.T) {
	d := Build(Input{Config: testConfig(), Uplinks: nil})
	if len(d.NFT.Default.Buckets) != 0 || d.NFT.Default.Reject || d.NFT.Default.FallbackDefault {
		t.Errorf("no uplink up: default balancer %+v, want empty (main table decides)", d.NFT.Default)
	}
	// Every table still has its unreachable route, so marked traffic of
	// pinned connections never leaks into the main table.
	for _, u := range testConfig().Uplinks {
		for _, fam := range tables.Families {
			found := false
			for _, r := range d.Tables.Routes {
				if r.Table == u.Table && r.Family == fam && r.Type == tables.Unreachable {
					found = true
				}
				if r.Table == u.Table && r.Type == tables.Unicast {
					t.Errorf("down uplink %s has a default route: %+v", u.Name, r)
				}
			}
			if !found {
				t.Errorf("table %d %v: no unreachable route", u.Table, fam)
			}
		}
	}
}

func TestRulesOrder(t *testing.T) {
	d := Build(Input{Config: testConfig(), Uplinks: allUp()})
	var v4 []tables.Rule
	for _, r := range d.Tables.Rules {
		if r.Family == tables.V4 {
			v4 = append(v4, r)
		}
	}
	want := []tables.Rule{
		{Family: tables.V4, Priority: 10000, Table: 254, Suppress: true},
		{Family: tables.V4, Priority: 10101, Table: 200, Mark: 0x10000, Mask: 0xff0000},
		{Family: tables.V4, Priority: 10401, Table: 200, Src: netip.MustParsePrefix("198.51.100.2/32")},
		{Family: tables.V4, Priority: 10102, Table: 201, Mark: 0x20000, Mask: 0xff0000},
		{Family: tables.V4, Priority: 10402, Table: 201, Src: netip.MustParsePrefix("198.51.100.10/32")},
		{Family: tables.V4, Priority: 10103, Table: 202, Mark: 0x30000, Mask: 0xff0000},
		{Family: tables.V4, Priority: 10403, Table: 202, Src: netip.MustParsePrefix("198.51.100.18/32")},
	}
	if !reflect.DeepEqual(v4, want) {
		t.Errorf("v4 rules:\n%+v\nwant\n%+v", v4, want)
	}
	for _, r := range d.Tables.Rules {
		if r.Priority < 10000 || r.Priority >= 10000+BlockSize {
			t.Errorf("rule outside the block: %+v", r)
		}
	}
}

func TestServicesResolution(t *testing.T) {
	cfg := testConfig()
	d := Build(Input{Config: cfg, Uplinks: allUp()})
	if p := d.NFT.Policies[2]; !p.ServicesUnresolved || len(p.Cgroups) != 0 {
		t.Errorf("unit not running: %+v", p)
	}
	cg := map[string][]rules.CgroupMatch{"restic.service": {{Level: 2, ID: 4242}}}
	d = Build(Input{Config: cfg, Uplinks: allUp(), Cgroups: cg})
	if p := d.NFT.Policies[2]; p.ServicesUnresolved || !reflect.DeepEqual(p.Cgroups, cg["restic.service"]) {
		t.Errorf("unit running: %+v", p)
	}
}

func TestUnhealthyKeepsRoutes(t *testing.T) {
	st := allUp()
	dsl1 := st["dsl1"]
	dsl1.SetUnhealthy()
	st["dsl1"] = dsl1
	d := Build(Input{Config: testConfig(), Uplinks: st})
	want := []rules.Bucket{{Mark: 0x20000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.Buckets, want) {
		t.Errorf("unhealthy dsl1 still balanced: %v", d.NFT.Default.Buckets)
	}
	found := false
	for _, r := range d.Tables.Routes {
		found = found || (r.Table == 200 && r.Type == tables.Unicast)
	}
	if !found {
		t.Error("unhealthy dsl1 lost its default route: its probes could never see the ISP come back")
	}
}
