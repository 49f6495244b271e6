package core

import (
	"strings"
	"testing"
	"time"
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
