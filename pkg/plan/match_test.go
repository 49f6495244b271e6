package plan

import (
	"net/netip"
	"testing"
)

func TestMatch(t *testing.T) {
	cfg := testConfig()
	cfg.Policies = append(cfg.Policies[:2:2], cfg.Policies[2])
	a := netip.MustParseAddr
	cases := []struct {
		name string
		f    Flow
		want int
	}{
		{"source policy", Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Proto: 6, DPort: 80}, 0},
		{"voip by port", Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5061}, 1},
		{"voip wrong protocol", Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 5061}, -1},
		{"nothing", Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443}, -1},
		{"source policy is for forwarded traffic only", Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10"), Local: true}, -1},
		{"services never match without a process", Flow{Local: true, Dst: a("203.0.113.10")}, -1},
	}
	for _, c := range cases {
		if got := Match(cfg, c.f); got != c.want {
			t.Errorf("%s: policy %d, want %d", c.name, got, c.want)
		}
	}
}

func TestExplain(t *testing.T) {
	cfg := testConfig()
	st := allUp()
	a := netip.MustParseAddr
	e := Explain(cfg, st, Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 6, DPort: 443})
	if e.Policy != "" || len(e.Choices) != 2 || e.Choices[0].Share != 0.75 || e.Choices[1].Uplink != "dsl2" {
		t.Errorf("default: %+v", e)
	}
	delete(st, "dsl1")
	e = Explain(cfg, st, Flow{Src: a("192.0.2.10"), Dst: a("203.0.113.10"), Proto: 17, DPort: 5060})
	if e.Policy != "voip" || !e.Rejected || len(e.Choices) != 0 {
		t.Errorf("voip with dsl1 down: %+v", e)
	}
	st["dsl2"] = UplinkState{}
	e = Explain(cfg, st, Flow{Src: a("192.0.2.20"), Dst: a("203.0.113.10")})
	if e.Policy != "p2p" || !e.Fallback || len(e.Choices) != 1 || e.Choices[0].Uplink != "lte" {
		t.Errorf("p2p falling back to the backup tier: %+v", e)
	}
}
