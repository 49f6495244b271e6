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
			{Name: "p2p", Match: policy.Match{Sources: []netip.Prefix{netip.MustParsePrefix("192.0.2.20/32")}}, Uplinks: []string{"dsl2"}},
			{Name: "voip", Match: policy.Match{Protocol: 17, Ports: []policy.PortRange{{First: 5060, Last: 5061}}},
				Uplinks: []string{"dsl1"}, FallbackNone: true},
			{Name: "backup", Match: policy.Match{Services: []string{"restic.service"}}, Uplinks: []string{"lte"}},
		},
	}
}

func up(addr, gw string) UplinkState {
	var s UplinkState
	*s.Of(inet.IPv4) = FamilyState{Up: true, Addrs: []netip.Addr{netip.MustParseAddr(addr)}, Gateway: netip.MustParseAddr(gw)}
	return s
}

func allUp() map[string]UplinkState {
	return map[string]UplinkState{
		"dsl1": up("198.51.100.2", "198.51.100.1"),
		"dsl2": up("198.51.100.10", "198.51.100.9"),
		"lte":  up("198.51.100.18", "198.51.100.17"),
	}
}

// Build must not depend on map iteration order (its inputs are maps), nor
// change its inputs: the same facts, built afresh each time from maps
// filled in another order, give one state.
func TestBuildIsDeterministic(t *testing.T) {
	cg := map[string][]policy.CgroupMatch{"restic.service": {{Level: 2, ID: 7}, {Level: 3, ID: 9}}}
	execs := []Exec{{Name: "exec_1", Uplink: "lte", Cgroup: policy.CgroupMatch{Level: 2, ID: 11}}}
	first := Build(Facts{Config: testConfig(), Uplinks: allUp(), Cgroups: cg, Execs: execs})
	for i := range 50 {
		st := map[string]UplinkState{}
		names := []string{"lte", "dsl2", "dsl1"}
		for j := range names {
			n := names[(i+j)%3]
			st[n] = allUp()[n]
		}
		in := Facts{Config: testConfig(), Uplinks: st, Cgroups: cg, Execs: execs}
		if got := Build(in); !reflect.DeepEqual(got, first) {
			t.Fatalf("build %d differs:\n%+v\nwant\n%+v", i, got, first)
		}
		if !reflect.DeepEqual(in.Uplinks, st) || !reflect.DeepEqual(in.Config, testConfig()) {
			t.Fatal("Build changed its input")
		}
	}
}

func TestBalancingByTierAndWeight(t *testing.T) {
	cfg := testConfig()
	st := allUp()
	d := Build(Facts{Config: cfg, Uplinks: st})
	want := []desired.Bucket{{Mark: 0x10000, Weight: 3}, {Mark: 0x20000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.V4.Buckets, want) {
		t.Errorf("tier 1 up: default buckets %v, want %v", d.NFT.Default.V4.Buckets, want)
	}
	// Both tier-1 uplinks down: the tier-2 backup takes over.
	delete(st, "dsl1")
	st["dsl2"] = UplinkState{}
	d = Build(Facts{Config: cfg, Uplinks: st})
	want = []desired.Bucket{{Mark: 0x30000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.V4.Buckets, want) {
		t.Errorf("tier 1 down: default buckets %v, want %v", d.NFT.Default.V4.Buckets, want)
	}
	// p2p's only candidate is down: fallback any hands it to the default.
	if p := d.NFT.Policies[0].Balancer.V4; len(p.Buckets) != 0 || !p.FallbackDefault || p.Reject {
		t.Errorf("p2p fallback any: %+v", p)
	}
	// voip's only candidate is down with fallback none: reject.
	if p := d.NFT.Policies[1].Balancer.V4; len(p.Buckets) != 0 || !p.Reject {
		t.Errorf("voip fallback none: %+v", p)
	}
}

func TestNothingUp(t *testing.T) {
	d := Build(Facts{Config: testConfig(), Uplinks: nil})
	if c := d.NFT.Default.V4; len(c.Buckets) != 0 || c.Reject || c.FallbackDefault {
		t.Errorf("no uplink up: default balancer %+v, want empty (main table decides)", d.NFT.Default)
	}
	// Every table still has its unreachable route, so marked traffic of
	// pinned connections never leaks into the main table.
	for _, u := range testConfig().Uplinks {
		for _, fam := range inet.Families {
			found := false
			for _, r := range d.Routing.Routes {
				if r.Table == u.Table && r.Family == fam && r.Type == desired.UnreachableRoute {
					found = true
				}
				if r.Table == u.Table && r.Type == desired.Unicast {
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
	d := Build(Facts{Config: testConfig(), Uplinks: allUp()})
	var v4 []desired.Rule
	for _, r := range d.Routing.Rules {
		if r.Family == inet.IPv4 {
			v4 = append(v4, r)
		}
	}
	want := []desired.Rule{
		{Family: inet.IPv4, Priority: 10000, Table: 254, Suppress: true},
		{Family: inet.IPv4, Priority: 10101, Table: 200, Mark: 0x10000, Mask: 0xff0000},
		{Family: inet.IPv4, Priority: 10401, Table: 200, Src: netip.MustParsePrefix("198.51.100.2/32")},
		{Family: inet.IPv4, Priority: 10102, Table: 201, Mark: 0x20000, Mask: 0xff0000},
		{Family: inet.IPv4, Priority: 10402, Table: 201, Src: netip.MustParsePrefix("198.51.100.10/32")},
		{Family: inet.IPv4, Priority: 10103, Table: 202, Mark: 0x30000, Mask: 0xff0000},
		{Family: inet.IPv4, Priority: 10403, Table: 202, Src: netip.MustParsePrefix("198.51.100.18/32")},
	}
	if !reflect.DeepEqual(v4, want) {
		t.Errorf("v4 rules:\n%+v\nwant\n%+v", v4, want)
	}
	for _, r := range d.Routing.Rules {
		if r.Priority < 10000 || r.Priority >= 10000+BlockSize {
			t.Errorf("rule outside the block: %+v", r)
		}
	}
}

func TestServicesResolution(t *testing.T) {
	cfg := testConfig()
	d := Build(Facts{Config: cfg, Uplinks: allUp()})
	// The unit is not running: the policy compiles to no rule at all
	// (it matches nothing rather than everything).
	if p := d.NFT.Policies[2]; len(p.Match.Cgroups) != 0 || len(policy.Compile(p.Name, p.Match).Local) != 0 {
		t.Errorf("unit not running: %+v", p)
	}
	cg := map[string][]policy.CgroupMatch{"restic.service": {{Level: 2, ID: 4242}}}
	d = Build(Facts{Config: cfg, Uplinks: allUp(), Cgroups: cg})
	if p := d.NFT.Policies[2]; !reflect.DeepEqual(p.Match.Cgroups, cg["restic.service"]) || len(policy.Compile(p.Name, p.Match).Local) != 1 {
		t.Errorf("unit running: %+v", p)
	}
}

func TestUnhealthyKeepsRoutes(t *testing.T) {
	st := allUp()
	dsl1 := st["dsl1"]
	dsl1.SetUnhealthy()
	st["dsl1"] = dsl1
	d := Build(Facts{Config: testConfig(), Uplinks: st})
	want := []desired.Bucket{{Mark: 0x20000, Weight: 1}}
	if !reflect.DeepEqual(d.NFT.Default.V4.Buckets, want) {
		t.Errorf("unhealthy dsl1 still balanced: %v", d.NFT.Default.V4.Buckets)
	}
	found := false
	for _, r := range d.Routing.Routes {
		found = found || (r.Table == 200 && r.Type == desired.Unicast)
	}
	if !found {
		t.Error("unhealthy dsl1 lost its default route: its probes could never see the ISP come back")
	}
}

// An uplink whose interface has an address but no gateway (the LAN's
// interface named by mistake) is marked NoGateway, and its interface is
// then neither in inbound nor in the guard; one with a gateway, down or
// not, is, and so is one with no address yet (a DHCP link waiting).
func TestGatewaylessNotPinned(t *testing.T) {
	cfg := testConfig()
	in := allUp()
	var lan UplinkState
	*lan.Of(inet.IPv4) = FamilyState{Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
	in["dsl2"] = lan
	down := up("198.51.100.18", "198.51.100.17")
	down.Of(inet.IPv4).Up = false
	in["lte"] = down
	d := Build(Facts{Config: cfg, Uplinks: in})
	got := map[string]bool{}
	for _, u := range d.NFT.Uplinks {
		got[u.Name] = u.NoGateway
	}
	if want := map[string]bool{"dsl1": false, "dsl2": true, "lte": false}; !reflect.DeepEqual(got, want) {
		t.Errorf("NoGateway %v, want %v", got, want)
	}
	in["dsl2"] = UplinkState{}
	if d := Build(Facts{Config: cfg, Uplinks: in}); d.NFT.Uplinks[1].NoGateway {
		t.Errorf("an uplink with no address yet is NoGateway")
	}
}
