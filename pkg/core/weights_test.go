package core

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"
)

const autoConfig = `
[[uplink]]
name = "fibre"
interface = "wan1"
weight = "auto"
bandwidth = "100Mbit"

[uplink.health]
targets = ["203.0.113.1"]

[[uplink]]
name = "dsl"
interface = "ppp0"
weight = "auto"
bandwidth = "50Mbit"

[uplink.health]
targets = ["203.0.113.2"]
`

// Adaptive weights, step by step: the start balances by the bandwidths'
// shares (100:50, 2:1); the estimator's new weights are one log line
// with their reason and an ordinary apply of the table and the router's
// multipath route, with nothing flushed or re-pinned; the same weights
// again change nothing; weights of an uplink that is not auto are
// ignored; a reload that makes dsl's weight fixed forgets its adaptive
// one.
func TestAutoWeightsGolden(t *testing.T) {
	bothUp := links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))
	fixed := mustConfig(t, strings.Replace(strings.Replace(autoConfig, `weight = "auto"
bandwidth = "50Mbit"`, "weight = 1", 1), `weight = "auto"
bandwidth = "100Mbit"`, "weight = 3", 1))
	steps := []step{
		{0, Start{Links: bothUp}},
		{10 * time.Second, AutoWeights{Weights: map[string]int{"fibre": 100, "dsl": 25},
			Reason: "dsl 50->25 (20 Mbit/s, saturated: 400 kbit/s per unit of weight, fibre carried 800 kbit/s)"}},
		{13 * time.Second, AutoWeights{Weights: map[string]int{"fibre": 100, "dsl": 25}, Reason: "again"}},
		{16 * time.Second, AutoWeights{Weights: map[string]int{"fibre": 100, "dsl": 25, "lte": 7}, Reason: "no such uplink"}},
		{20 * time.Second, Reload{Config: fixed}},
		{23 * time.Second, AutoWeights{Weights: map[string]int{"fibre": 100, "dsl": 60}, Reason: "not auto any more"}},
	}
	s, got, res := run(mustConfig(t, autoConfig), steps)
	checkGolden(t, "auto_weights", got)
	if k := kinds(res[1].Effects); strings.Join(k, " ") != "routing nft" {
		t.Errorf("new weights: %v, want routing and nft alone (nothing flushed)", k)
	}
	for i := 2; i <= 3; i++ {
		if len(res[i].Effects) != 0 {
			t.Errorf("step %d: the same weights gave effects %v", i, res[i].Effects)
		}
	}
	if len(res[5].Effects) != 0 || len(s.Weights) != 0 {
		t.Errorf("after the reload to fixed weights: effects %v, weights %v", res[5].Effects, s.Weights)
	}
	if r := res[1].State.Report(); r.Uplinks[1].Weight != 25 || !r.Uplinks[1].WeightAuto || r.Uplinks[1].Bandwidth != 50e6 {
		t.Errorf("status after new weights: %+v", r.Uplinks[1])
	}
}

// A random walk of carrier flaps, verdicts and new weights: a weight
// change never flushes, moves or re-pins anything (no FlushMark,
// FlushAddr, Failback, hooks), and the table's buckets always carry the
// weights in force of the usable uplinks.
func TestAutoWeightsRandomWalk(t *testing.T) {
	cfg := mustConfig(t, autoConfig)
	rng := rand.New(rand.NewPCG(5, 6))
	wan := []Link{fibre(), noCarrier(fibre())}
	pppLinks := []Link{ppp(7, "198.51.100.10", "198.51.100.9"), noCarrier(ppp(7, "198.51.100.10", "198.51.100.9"))}
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), pppLinks[0])}).State
	for i := range 2000 {
		at := t0.Add(time.Duration(i+1) * time.Second)
		var in Input
		switch rng.IntN(3) {
		case 0:
			in = Observed{Links: links(wan[rng.IntN(2)], pppLinks[rng.IntN(2)]), Trigger: "netlink"}
		case 1:
			in = HealthVerdict{Key: Key{"dsl", inet.IPv4}, Verdict: Verdict{Healthy: rng.IntN(2) == 0, Reason: "r"}}
		case 2:
			in = AutoWeights{Weights: map[string]int{"fibre": 5 + rng.IntN(96), "dsl": 5 + rng.IntN(96)}, Reason: "walk"}
		}
		r := Step(s, at, in)
		s = r.State
		if _, ok := in.(AutoWeights); ok {
			for _, e := range r.Effects {
				switch e.(type) {
				case FlushMark, FlushAddr, Failback, RunHooks:
					t.Fatalf("step %d: new weights gave %v", i, e)
				}
			}
		}
		want := WithWeights(cfg, s.Weights)
		for _, f := range inet.Families {
			for _, b := range s.Desired.NFT.Default.For(f).Buckets {
				u := want.Uplinks[uplinkIndex(cfg, b.Mark)]
				if b.Weight != u.Weight {
					t.Fatalf("step %d %T: %s %v bucket weight %d, in force %d", i, in, u.Name, f, b.Weight, u.Weight)
				}
			}
		}
	}
}
