package core

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

func TestExplainPolicies(t *testing.T) {
	a := netip.MustParseAddr
	cfg := testConfig()
	cfg.Policies = append(cfg.Policies,
		config.Policy{Name: "gid", Match: policy.Match{GIDs: []uint32{0}}, Uplinks: []string{"dsl2"}},
		config.Policy{Name: "uid", Match: policy.Match{UIDs: []uint32{1001}}, Uplinks: []string{"lte"}})
	nft := Build(Facts{Config: cfg, Uplinks: allUp()})
	cases := []struct {
		name   string
		f      policy.Flow
		policy string
		out    Outcome
	}{
		{"source policy", policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Proto: 6, DPort: 80}, "p2p", Balanced},
		{"voip by port", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5061}, "voip", Balanced},
		{"voip wrong protocol", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 5061}, "", Balanced},
		{"nothing", policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443}, "", Balanced},
		{"source policy is for forwarded traffic only", policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Local: true, UID: 5, GID: 5}, "", MainTable},
		{"a service not running matches nothing", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 5, GID: 5}, "", MainTable},
		// Users and groups are matched apart: uid 1001 in group 1001 is
		// not group 0 (explain once reported any gid as 0).
		{"uid", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, GID: 1001}, "uid", Balanced},
		{"gid", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, GID: 0}, "gid", Balanced},
		{"users are for the router's own traffic", policy.Flow{Dst: a("203.0.113.10")}, "", Balanced},
		{"from the internet", policy.Flow{Dst: a("198.51.100.2"), InIface: "wan2"}, "", Inbound},
		{"a socket mark wins", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, Mark: 0x30000}, "", SocketMark},
		// wg-quick's 51820: outside wanpin's mask, another program's.
		{"another program's mark", policy.Flow{Local: true, Dst: a("203.0.113.10"), UID: 1001, Mark: 0xca6c}, "", ForeignMark},
	}
	for _, c := range cases {
		e := Explain(nft, c.f, nil)
		if e.Policy != c.policy || e.Outcome != c.out {
			t.Errorf("%s: policy %q %s, want %q %s (%+v)", c.name, e.Policy, e.Outcome, c.policy, c.out, e)
		}
	}
}

func TestExplainShares(t *testing.T) {
	cfg := testConfig()
	st := allUp()
	a := netip.MustParseAddr
	e := Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443}, nil)
	if e.Policy != "" || len(e.Choices) != 2 || e.Choices[0].Share != 0.75 || e.Choices[1].Uplink != "dsl2" {
		t.Errorf("default: %+v", e)
	}
	delete(st, "dsl1")
	e = Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5060}, nil)
	if e.Policy != "voip" || e.Outcome != Rejected || len(e.Choices) != 0 {
		t.Errorf("voip with dsl1 down: %+v", e)
	}
	st["dsl2"] = UplinkState{}
	e = Explain(Build(Facts{Config: cfg, Uplinks: st}), policy.Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10")}, nil)
	if e.Policy != "p2p" || !e.Fallback || len(e.Choices) != 1 || e.Choices[0].Uplink != "lte" {
		t.Errorf("p2p falling back to the backup tier: %+v", e)
	}
	// The router's own traffic that no policy takes follows the main
	// table: explain says so instead of claiming a balance.
	e = Explain(Build(Facts{Config: cfg, Uplinks: allUp()}), policy.Flow{Local: true, Dst: a("203.0.113.10"), Proto: 6}, nil)
	if e.Outcome != MainTable || len(e.Choices) != 0 {
		t.Errorf("router's own: %+v", e)
	}
	if e := Explain(Build(Facts{Config: cfg, Uplinks: allUp()}), policy.Flow{Dst: a("198.51.100.2"), Src: a("192.0.2.10")},
		[]netip.Addr{a("198.51.100.2")}); e.Outcome != NotRouted {
		t.Errorf("to the router: %+v", e)
	}
}

func TestExplainSticky(t *testing.T) {
	d := desired.State{NFT: desired.NFT{Mask: 0xff00,
		Uplinks: []desired.Uplink{{Name: "a", Interface: "eth1", Mark: 0x100}, {Name: "b", Interface: "eth2", Mark: 0x200}},
		Default: desired.Balancer{
			V4:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
			V6:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
			Sticky: desired.Sticky{Timeout: 10 * time.Minute},
		}}}
	x := NewExplainer(d)
	f := policy.Flow{Src: netip.MustParseAddr("192.0.2.7"), Dst: netip.MustParseAddr("198.51.100.1"), Proto: 6, DPort: 443}
	remembers := func(pol string, fam inet.Family, mark uint32, src, dst netip.Addr) (time.Duration, bool) {
		if pol == "" && fam == inet.IPv4 && mark == 0x200 && src == f.Src && !dst.IsValid() {
			return 61 * time.Second, true
		}
		return 0, false
	}
	e := x.ExplainSticky(f, nil, remembers)
	if e.Outcome != Balanced || e.Sticky == nil || e.Sticky.Uplink != "b" || e.Sticky.Left != 61 || len(e.Choices) != 1 || e.Choices[0].Uplink != "b" {
		t.Errorf("remembered source: %+v", e)
	}
	if !strings.Contains(e.Why, "sticky: this source's last new connection took b (remembered 1m1s more)") {
		t.Errorf("why: %s", e.Why)
	}
	other := f
	other.Src = netip.MustParseAddr("192.0.2.8")
	e = x.ExplainSticky(other, nil, remembers)
	if e.Sticky != nil || len(e.Choices) != 2 || !strings.Contains(e.Why, "sticky 10m0s: the uplink it gets is remembered for this source") {
		t.Errorf("a new source: %+v", e)
	}
}
