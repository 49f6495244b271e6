package core

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/quota"
)

// quotaConfig: fibre and dsl share tier 1; dsl has a daily 10 MB quota
// and moves its connections when it is used up.
func quotaConfig(extra string) string {
	return `
[[uplink]]
name = "fibre"
interface = "wan1"

[[uplink]]
name = "dsl"
interface = "ppp0"
quota = "10MB"
quota_period = "daily"
` + extra
}

// Data quotas, step by step (golden quota): dsl starts with 9 MB
// counted today (the state file), crosses 10 MB at the second reading
// (used up: it leaves the balancing at once, its connections move to
// fibre, the count is saved at once); while fibre is out, dsl is the
// last resort and carries everything; fibre's return moves dsl's
// connections back. The admin raises the quota (dsl is balanced again)
// and resets it; growth is saved at most once a minute; a reload ends
// the admin's limit (used up again); midnight starts a new day from
// zero; stop saves the counts. A quota command for an uplink without a
// quota is refused.
func TestQuotaGolden(t *testing.T) {
	cfg := mustConfig(t, quotaConfig(`failback = "move"`))
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	today := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	steps := []step{
		{0, Start{Links: links(fibre(), pppUp), Quotas: map[string]quota.Usage{"dsl": {PeriodStart: today, Used: 9_000_000}}}},
		{time.Second, TrafficReading{Bytes: map[string]uint64{"fibre": 5_000_000, "dsl": 500_000}}},
		{2 * time.Second, TrafficReading{Bytes: map[string]uint64{"fibre": 6_000_000, "dsl": 1_200_000}}},
		{3 * time.Second, Observed{Links: links(noCarrier(fibre()), pppUp), Trigger: "netlink"}},
		{4 * time.Second, Observed{Links: links(fibre(), pppUp), Trigger: "netlink"}},
		{5 * time.Second, QuotaCommand{Uplink: "dsl", Limit: 20_000_000}},
		{6 * time.Second, QuotaCommand{Uplink: "dsl", Reset: true}},
		{7 * time.Second, TrafficReading{Bytes: map[string]uint64{"fibre": 6_000_000, "dsl": 12_000_000}}},
		{70 * time.Second, TrafficReading{Bytes: map[string]uint64{"fibre": 6_000_000, "dsl": 12_000_100}}},
		{71 * time.Second, TrafficReading{Bytes: map[string]uint64{"fibre": 6_000_000, "dsl": 12_000_200}}},
		{80 * time.Second, Reload{Config: cfg}},
		{12 * time.Hour, TrafficReading{Bytes: map[string]uint64{"fibre": 6_000_000, "dsl": 12_000_300}}},
		{12*time.Hour + time.Second, QuotaCommand{Uplink: "fibre", Reset: true}},
		{13 * time.Hour, Stop{}},
	}
	s, got, res := run(cfg, steps)
	checkGolden(t, "quota", got)

	// The decisions, stated apart from the golden.
	q := func(i int) QuotaState { return res[i].State.Quotas["dsl"] }
	if q(0).Used != 9_000_000 || q(0).Exhausted || !q(0).Start.Equal(today) {
		t.Errorf("start: %+v", q(0))
	}
	if q(1).Used != 9_500_000 || q(1).Exhausted || hasSave(res[1]) {
		t.Errorf("reading 1: %+v, saved %v", q(1), hasSave(res[1]))
	}
	if q(2).Used != 10_200_000 || !q(2).Exhausted || !hasSave(res[2]) {
		t.Errorf("reading 2: %+v, saved %v", q(2), hasSave(res[2]))
	}
	if got := res[2].State.Desired.NFT.Default.V4.Buckets; len(got) != 1 || got[0].Mark != cfg.UplinkMark(0) {
		t.Errorf("used up: balanced over %v, want fibre alone", got)
	}
	if !slices.ContainsFunc(res[2].Effects, func(e Effect) bool { f, ok := e.(Failback); return ok && f.Uplink == "dsl" && f.To == "fibre" }) {
		t.Errorf("used up: dsl's connections not moved: %v", res[2].Effects)
	}
	if got := res[3].State.Desired.NFT.Default.V4.Buckets; len(got) != 1 || got[0].Mark != cfg.UplinkMark(1) {
		t.Errorf("fibre out: balanced over %v, want dsl, the last resort", got)
	}
	if got := res[5].State.Desired.NFT.Default.V4.Buckets; len(got) != 2 || q(5).Exhausted || !q(5).Raised {
		t.Errorf("raised: balanced over %v, %+v", got, q(5))
	}
	if q(6).Used != 0 || !hasSave(res[6]) {
		t.Errorf("reset: %+v", q(6))
	}
	if hasSave(res[7]) || !hasSave(res[8]) || hasSave(res[9]) {
		t.Errorf("saves while counting: %v %v %v, want only the one a minute after the last", hasSave(res[7]), hasSave(res[8]), hasSave(res[9]))
	}
	if q(10).Raised || q(10).Limit != 10_000_000 || !q(10).Exhausted {
		t.Errorf("reload: %+v", q(10))
	}
	if !q(11).Start.Equal(today.AddDate(0, 0, 1)) || q(11).Used != 100 || q(11).Exhausted || !hasSave(res[11]) {
		t.Errorf("next day: %+v", q(11))
	}
	if res[12].Err == nil || !strings.Contains(res[12].Err.Error(), `uplink "fibre" has no quota`) {
		t.Errorf("fibre: %v", res[12].Err)
	}
	if !hasSave(res[13]) {
		t.Errorf("stop saves nothing")
	}
	if r := s.Report(); r.Uplinks[1].Quota == nil || r.Uplinks[1].Quota.Used != 100 || r.Uplinks[0].Quota != nil {
		t.Errorf("report: %+v", r.Uplinks)
	}
}

func hasSave(r Result) bool {
	return slices.ContainsFunc(r.Effects, func(e Effect) bool { _, ok := e.(SaveQuota); return ok })
}

// quota_action = "off": a used-up quota takes the uplink out as a
// failure would (its connections flushed after nftables and routing); a
// count of an older period is dropped at start, and the new period's
// start saved at once.
func TestQuotaOffGolden(t *testing.T) {
	cfg := mustConfig(t, quotaConfig(`quota_action = "off"`))
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	yesterday := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	steps := []step{
		{0, Start{Links: links(fibre(), pppUp), Quotas: map[string]quota.Usage{"dsl": {PeriodStart: yesterday, Used: 9_999_999}}}},
		{time.Second, TrafficReading{Bytes: map[string]uint64{"dsl": 10_000_000}}},
		{2 * time.Second, QuotaCommand{Uplink: "dsl", Reset: true}},
	}
	_, got, res := run(cfg, steps)
	checkGolden(t, "quota_off", got)
	if q := res[0].State.Quotas["dsl"]; q.Used != 0 || !hasSave(res[0]) {
		t.Errorf("an older period's count was kept: %+v", q)
	}
	if got := kinds(res[1].Effects); !slices.Equal(got, []string{"nft", "routing", "flush"}) {
		t.Errorf("used up with action off: %v, want nft, routing, flush", got)
	}
	if u := res[1].State.Uplinks["dsl"]; u.Up || !strings.Contains(u.Reason, "data quota used up") {
		t.Errorf("dsl: %+v", u)
	}
	if u := res[2].State.Uplinks["dsl"]; !u.Up {
		t.Errorf("dsl after the reset: %+v", u)
	}
}

// The balancer: a used-up uplink is worse than every tier, and a
// policy without fallback keeps its used-up candidate as its last resort.
func TestQuotaBalancer(t *testing.T) {
	cfg := mustConfig(t, `
[[uplink]]
name = "fibre"
interface = "wan1"

[[uplink]]
name = "lte"
interface = "wwan0"
tier = 2

[[uplink]]
name = "dsl"
interface = "ppp0"
tier = 3

[[policy]]
name = "strict"
ports = ["22"]
uplinks = ["fibre"]
fallback = "none"

[[policy]]
name = "loose"
ports = ["23"]
uplinks = ["fibre"]
`)
	up := UplinkState{}
	*up.Of(inet.IPv4) = FamilyState{Up: true}
	spent := up
	spent.Exhausted = true
	down := UplinkState{}
	marks := func(st map[string]UplinkState) (def, strict, loose []uint32) {
		d := Build(Facts{Config: cfg, Uplinks: st})
		for _, b := range d.NFT.Default.V4.Buckets {
			def = append(def, b.Mark)
		}
		for _, b := range d.NFT.Policies[0].Balancer.V4.Buckets {
			strict = append(strict, b.Mark)
		}
		for _, b := range d.NFT.Policies[1].Balancer.V4.Buckets {
			loose = append(loose, b.Mark)
		}
		return
	}
	fibre, dsl := cfg.UplinkMark(0), cfg.UplinkMark(2)
	for _, c := range []struct {
		name               string
		st                 map[string]UplinkState
		def, strict, loose []uint32
	}{
		{"fibre used up: the worst tier's dsl before it", map[string]UplinkState{"fibre": spent, "lte": down, "dsl": up}, []uint32{dsl}, []uint32{fibre}, nil},
		{"all used up: by tier", map[string]UplinkState{"fibre": spent, "lte": spent, "dsl": spent}, []uint32{fibre}, []uint32{fibre}, []uint32{fibre}},
		{"fibre used up, nothing else up: fibre", map[string]UplinkState{"fibre": spent, "lte": down, "dsl": down}, []uint32{fibre}, []uint32{fibre}, []uint32{fibre}},
		{"lte used up, fibre down: dsl", map[string]UplinkState{"fibre": down, "lte": spent, "dsl": up}, []uint32{dsl}, nil, nil},
	} {
		def, strict, loose := marks(c.st)
		if !slices.Equal(def, c.def) || !slices.Equal(strict, c.strict) || !slices.Equal(loose, c.loose) {
			t.Errorf("%s: default %#x strict %#x loose %#x; want %#x %#x %#x", c.name, def, strict, loose, c.def, c.strict, c.loose)
		}
	}
}

// A random walk of readings, carrier flaps, quota commands and reloads
// of a two-quota configuration: after every step a quota is used up
// exactly when its count reaches its limit, the count never goes back
// but at a reset or a new period, and no balancer chooses a used-up
// uplink while an uplink whose quota is not used up can carry the family.
func TestQuotaRandomWalk(t *testing.T) {
	cfg := mustConfig(t, `
[[uplink]]
name = "fibre"
interface = "wan1"
quota = "3MB"
quota_period = "daily"
failback = "move"

[[uplink]]
name = "dsl"
interface = "ppp0"
tier = 2
quota = "2MB"
quota_action = "off"

[[policy]]
name = "voip"
ports = ["5060"]
uplinks = ["dsl"]
fallback = "none"
`)
	rng := rand.New(rand.NewPCG(5, 6))
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), pppUp)}).State
	totals := map[string]uint64{}
	at := t0
	for i := range 3000 {
		at = at.Add(time.Duration(rng.IntN(600)) * time.Second)
		var in Input
		reset := false
		switch rng.IntN(6) {
		case 0, 1, 2:
			for _, n := range []string{"fibre", "dsl"} {
				totals[n] += uint64(rng.IntN(400_000))
			}
			in = TrafficReading{Bytes: maps.Clone(totals)}
		case 3:
			wan := []Link{fibre(), noCarrier(fibre())}[rng.IntN(2)]
			p := []Link{pppUp, noCarrier(pppUp)}[rng.IntN(2)]
			in = Observed{Links: links(wan, p), Trigger: "netlink"}
		case 4:
			reset = rng.IntN(2) == 0
			in = QuotaCommand{Uplink: []string{"fibre", "dsl"}[rng.IntN(2)], Reset: reset, Limit: uint64(1 + rng.IntN(4_000_000))}
		case 5:
			in = Reload{Config: cfg}
		}
		prev := s
		r := Step(prev, at, in)
		s = r.State
		for name, q := range s.Quotas {
			if q.Exhausted != (q.Used >= q.Limit) {
				t.Fatalf("step %d %T: %s used %d of %d, exhausted %v", i, in, name, q.Used, q.Limit, q.Exhausted)
			}
			p := prev.Quotas[name]
			if q.Used < p.Used && !reset && !q.Start.After(p.Start) {
				t.Fatalf("step %d %T: %s's count went back from %d to %d", i, in, name, p.Used, q.Used)
			}
			if st := s.Uplinks[name]; q.Exhausted && st.State.LinkUp() && st.State.Exhausted == (name == "dsl") {
				t.Fatalf("step %d: %s used up: state %+v", i, name, st.State)
			}
		}
		for _, f := range inet.Families {
			spare := false
			for _, u := range cfg.Uplinks {
				if st := s.Uplinks[u.Name].State; st.Family(f).Usable() && !st.Exhausted {
					spare = true
				}
			}
			for _, b := range s.Desired.NFT.Default.For(f).Buckets {
				for j, u := range cfg.Uplinks {
					if st := s.Uplinks[u.Name].State; cfg.UplinkMark(j) == b.Mark && (!st.Family(f).Usable() || spare && st.Exhausted) {
						t.Fatalf("step %d %T: %s %v balanced: usable %v, used up %v, another usable %v", i, in, u.Name, f, st.Family(f).Usable(), st.Exhausted, spare)
					}
				}
			}
		}
	}
}

// A reload applies the file's quota: a larger one makes a used-up
// uplink available again, a new period setting keeps the count and
// moves the bounds, no quota at all forgets it (and the uplink is
// balanced again).
func TestQuotaReload(t *testing.T) {
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	today := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	steps := []step{
		{0, Start{Links: links(fibre(), pppUp), Quotas: map[string]quota.Usage{"dsl": {PeriodStart: today, Used: 10_200_000}}}},
		{time.Second, Reload{Config: mustConfig(t, strings.Replace(quotaConfig(""), `"10MB"`, `"20MB"`, 1))}},
		{2 * time.Second, Reload{Config: mustConfig(t, strings.Replace(quotaConfig(""), `quota_period = "daily"`, `quota_reset_day = 15`, 1))}},
		{3 * time.Second, Reload{Config: mustConfig(t, strings.Replace(quotaConfig(""), `quota = "10MB"
quota_period = "daily"`, "", 1))}},
	}
	_, out, res := run(mustConfig(t, quotaConfig("")), steps)
	balanced := func(r Result) int { return len(r.State.Desired.NFT.Default.V4.Buckets) }
	if q := res[0].State.Quotas["dsl"]; !q.Exhausted || balanced(res[0]) != 1 {
		t.Errorf("start: %+v, %d balanced", q, balanced(res[0]))
	}
	if q := res[1].State.Quotas["dsl"]; q.Exhausted || q.Limit != 20e6 || q.Used != 10_200_000 || balanced(res[1]) != 2 ||
		!strings.Contains(out, `reason="the reloaded file's quota is 20 MB: 10.2 MB of 20 MB used`) {
		t.Errorf("a larger quota: %+v, %d balanced\n%s", q, balanced(res[1]), out)
	}
	if q := res[2].State.Quotas["dsl"]; !q.Exhausted || q.Used != 10_200_000 || !q.Start.Equal(time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC)) ||
		!q.NextReset.Equal(time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("monthly from the 15th: %+v", q)
	}
	if _, ok := res[3].State.Quotas["dsl"]; ok || res[3].State.Uplinks["dsl"].State.Exhausted || balanced(res[3]) != 2 || res[3].State.Report().Uplinks[1].Quota != nil {
		t.Errorf("no quota: %+v, %d balanced", res[3].State.Quotas, balanced(res[3]))
	}
	if !strings.Contains(out, `log info "quota removed by the reload" uplink="dsl" counted="10.2 MB"`) {
		t.Errorf("the quota's end is not logged:\n%s", out)
	}
}
