package core

import (
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/wanpin/wanpin/pkg/adaptive"
	"github.com/wanpin/wanpin/pkg/config"
)

// AutoLinks is the estimator's view of the weight = "auto" uplinks.
func AutoLinks(cfg *config.Config) []adaptive.Link {
	var out []adaptive.Link
	for _, u := range cfg.Uplinks {
		if u.AutoWeight {
			out = append(out, adaptive.Link{Name: u.Name, Tier: u.Tier, Bandwidth: float64(u.Bandwidth)})
		}
	}
	return out
}

// AutoPrior is the weights of the auto uplinks before the estimator
// has said anything: their bandwidths' shares per tier (equal without).
func AutoPrior(cfg *config.Config) map[string]int { return adaptive.Prior(AutoLinks(cfg)) }

// WithWeights is cfg with each auto uplink's weight filled in: the
// adaptive weight in force, else its prior. Without auto uplinks it is
// cfg itself.
func WithWeights(cfg *config.Config, w map[string]int) *config.Config {
	if !slices.ContainsFunc(cfg.Uplinks, func(u config.Uplink) bool { return u.AutoWeight }) {
		return cfg
	}
	prior := AutoPrior(cfg)
	c := *cfg
	c.Uplinks = slices.Clone(cfg.Uplinks)
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		if !u.AutoWeight {
			continue
		}
		if v, ok := w[u.Name]; ok && v >= 1 {
			u.Weight = min(v, config.MaxWeight)
		} else {
			u.Weight = prior[u.Name]
		}
	}
	return &c
}

// autoWeights takes the estimator's new weights: the auto uplinks' new
// shares, one log line with the reason, and an ordinary apply of the
// tables (only new connections' shares change).
func (s *State) autoWeights(r *Result, at time.Time, in AutoWeights) {
	next := map[string]int{}
	for _, u := range s.Config.Uplinks {
		if v, ok := in.Weights[u.Name]; ok && u.AutoWeight {
			next[u.Name] = v
		}
	}
	before := WithWeights(s.Config, s.Weights)
	after := WithWeights(s.Config, next)
	if slices.EqualFunc(before.Uplinks, after.Uplinks, func(a, b config.Uplink) bool { return a.Weight == b.Weight }) {
		s.Weights = next
		return
	}
	was, now := map[string]int{}, map[string]int{}
	for i, u := range after.Uplinks {
		if u.AutoWeight {
			was[u.Name], now[u.Name] = before.Uplinks[i].Weight, u.Weight
		}
	}
	r.log(slog.LevelInfo, "uplink weights changed", "weights", adaptive.WeightsText(now), "was", adaptive.WeightsText(was),
		"reason", in.Reason)
	s.Weights = next
	s.reconcile(r, at, "adaptive weights")
}

// pruneWeights forgets the weights of uplinks a reload made not auto.
func (s *State) pruneWeights() {
	auto := map[string]bool{}
	for _, u := range s.Config.Uplinks {
		auto[u.Name] = u.AutoWeight
	}
	maps.DeleteFunc(s.Weights, func(n string, _ int) bool { return !auto[n] })
}
