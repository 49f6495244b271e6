package daemon

import (
	"time"

	"github.com/wanpin/wanpin/pkg/adaptive"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
)

// adaptWeights hands the estimator the latest traffic reading of the
// weight = "auto" uplinks (and their probes' round trips), and the
// machine its new weights when they moved by a step or more: an
// ordinary apply, which replaces the nftables table, so it is not done
// for less.
func (d *Daemon) adaptWeights() {
	cfg := d.state.Config
	sample := adaptive.Sample{At: time.Now(), Links: map[string]adaptive.Reading{}}
	for _, u := range cfg.Uplinks {
		t, ok := d.traffic[u.Name]
		if !u.AutoWeight || !ok {
			continue
		}
		r := adaptive.Reading{InBytes: t.InBytes, OutBytes: t.OutBytes, Usable: d.state.Uplinks[u.Name].Up}
		for _, f := range inet.Families {
			if m, ok := d.monitors[core.Key{Uplink: u.Name, Family: f}]; ok && r.RTT == 0 {
				r.RTT, _ = m.Stats()
			}
		}
		sample.Links[u.Name] = r
	}
	if len(sample.Links) == 0 && len(d.estimates) == 0 {
		return
	}
	upd := d.adapt.Update(sample)
	d.estimates = upd.Estimates
	if upd.Changed {
		d.step(core.AutoWeights{Weights: upd.Weights, Reason: upd.Reason})
	}
}

// reloadWeights follows a reloaded file: uplinks whose tier or
// bandwidth changed start from their priors, and the machine gets the
// weights in force (a step that changes nothing when they are the same).
func (d *Daemon) reloadWeights() {
	d.adapt.SetLinks(core.AutoLinks(d.state.Config))
	d.estimates = d.adapt.Estimates()
	d.step(core.AutoWeights{Weights: d.adapt.Weights(), Reason: "reload: uplinks whose tier or bandwidth changed start again from their bandwidth"})
}
