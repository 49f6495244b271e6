// Package adaptive turns what each uplink delivers into balancing
// weights, for uplinks with weight = "auto". It is pure: a sample (a
// time, each uplink's interface byte counters and latest health round
// trip) goes in, capacity estimates and integer weights come out; no
// clock, no kernel.
//
// The method. A link's delivered rate is only its capacity while demand
// exceeds it, so a window's rate counts as evidence only when it says
// something:
//
//   - faster than estimated: a link that carried r bit/s can carry r, so
//     the estimate rises toward r, busy or not;
//   - saturated: a busy link (carrying at least BusyFloor and
//     BusyFraction of its estimate) whose health round trip rose well
//     above its idle baseline: its queue (the ISP's shaper, the modem)
//     is full, so what it carries is what it can: the estimate moves
//     toward it;
//   - anything else (idle, or busy without a rising round trip): no
//     evidence, and the estimate decays toward the prior (the
//     configured bandwidth, or without one the fastest estimate of its
//     tier), so an idle link never looks slow.
//
// Evidence counts from its second window in a row, and moves an
// estimate by Alpha of the gap per window (an exponentially weighted
// moving average: one burst does not swing it), never above the
// configured bandwidth. Weights are the estimates
// scaled so that the fastest uplink of a tier has Scale, bounded below
// by MinWeight (a slow link keeps enough connections to be measured),
// and new weights are handed out only when one moves by a step: Step of
// its value, and at least MinStep.
//
// Comparing the links' rates per unit of weight is not evidence: with
// downloads that follow one another (a browser, a package manager) the
// slow link holds most of the connections in flight and carries more
// per unit of weight than a fast one that is idle half the time.
package adaptive

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Scale is the weight of a tier's fastest auto uplink; MinWeight the
// least any gets (a share of 1:20 against the fastest).
const (
	Scale     = 100
	MinWeight = 5
)

// Params tune the estimator; DefaultParams is what the daemon uses.
type Params struct {
	// Window: rates are measured over windows this long (the samples in
	// between only accumulate), and weights recomputed at each end.
	Window time.Duration
	// Alpha: how far one window's evidence moves an estimate (0..1).
	Alpha float64
	// BusyFloor (bit/s) and BusyFraction (of the estimate): below either
	// a link is idle and its rate says nothing about its capacity.
	BusyFloor    float64
	BusyFraction float64
	// RTTRise: a round trip this much above the baseline (or twice the
	// baseline, whichever is more) says the link's queue is full.
	RTTRise time.Duration
	// HalfLife: without evidence, an estimate's gap to its prior halves
	// in this long.
	HalfLife time.Duration
	// Step (a fraction of the weight in force) and MinStep (points):
	// weights change only when one moves by at least both.
	Step    float64
	MinStep int
}

// DefaultParams: 3 s windows, 40% of the gap per window, busy from 200
// kbit/s and 5% of the estimate, saturated at 15 ms of round trip over
// the baseline (or twice it), a half-life of 10 minutes, steps of 15%
// of a weight and at least 3.
func DefaultParams() Params {
	return Params{Window: 3 * time.Second, Alpha: 0.4, BusyFloor: 200e3, BusyFraction: 0.05,
		RTTRise: 15 * time.Millisecond, HalfLife: 10 * time.Minute, Step: 0.15, MinStep: 3}
}

// Link is one auto uplink as the estimator knows it.
type Link struct {
	Name string
	Tier int
	// Bandwidth is the configured bit/s: the start and the cap of the
	// estimate; 0: none (it starts as fast as the fastest of its tier).
	Bandwidth float64
}

// Reading is one uplink in a sample.
type Reading struct {
	// InBytes, OutBytes: totals since some start, only growing (a total
	// that shrinks starts the window again for that link).
	InBytes, OutBytes uint64
	// RTT: the latest health round trip; 0: not probed or no answer.
	RTT time.Duration
	// Usable: it carries new connections; a link that does not gets no
	// evidence (and its estimate decays toward its prior).
	Usable bool
}

// Sample is one reading of every uplink; a missing uplink has no
// interface (its window starts again).
type Sample struct {
	At    time.Time
	Links map[string]Reading
}

// Estimate is what the estimator thinks of one uplink.
type Estimate struct {
	Capacity float64 // bit/s; 0: not known yet
	Rate     float64 // bit/s carried in the last window (the busier direction)
	Evidence string  // what the last window said, in words
}

// Update is what one sample gave.
type Update struct {
	// Ended: a window ended with this sample (the estimates are new).
	Ended bool
	// Changed: Weights differ from the last ones handed out by a step
	// or more (or the set of uplinks changed); Reason says why, in one line.
	Changed bool
	Weights map[string]int
	Reason  string
	// Estimates of every link, for status and metrics.
	Estimates map[string]Estimate
}

type linkState struct {
	Link
	est     float64
	start   Reading
	started bool
	baseRTT time.Duration
	kind    string // the last window's kind of evidence: "faster", "saturated" or ""
	last    Estimate
}

// Estimator follows the auto uplinks. The zero value is not usable: New.
type Estimator struct {
	p       Params
	links   []*linkState
	weights map[string]int // handed out last
	window  time.Time      // start of the current window
	at      time.Time      // the latest sample's
	opened  bool
}

// New starts an estimator for links, their estimates at their priors.
func New(p Params, links []Link) *Estimator {
	e := &Estimator{p: p}
	e.SetLinks(links)
	return e
}

// SetLinks follows a new configuration: links whose tier and bandwidth
// did not change keep their estimates, the others start afresh. The
// weights in force become the estimates' (Weights).
func (e *Estimator) SetLinks(links []Link) {
	old := map[string]*linkState{}
	for _, l := range e.links {
		old[l.Name] = l
	}
	e.links = nil
	for _, l := range links {
		if o, ok := old[l.Name]; ok && o.Link == l {
			e.links = append(e.links, o)
			continue
		}
		e.links = append(e.links, &linkState{Link: l, est: l.Bandwidth})
	}
	e.weights = e.compute()
}

// Weights are the weights in force: the last ones handed out.
func (e *Estimator) Weights() map[string]int { return maps.Clone(e.weights) }

// Estimates are the latest estimates, by uplink.
func (e *Estimator) Estimates() map[string]Estimate {
	out := map[string]Estimate{}
	for _, l := range e.links {
		est := l.last
		est.Capacity = l.est
		out[l.Name] = est
	}
	return out
}

// Prior is the weights of links before any sample: their configured
// bandwidths scaled per tier (equal without bandwidths).
func Prior(links []Link) map[string]int { return New(DefaultParams(), links).Weights() }

// Update takes one sample. Only at the end of a window does anything
// change; in between the sample is only kept as the window's end.
func (e *Estimator) Update(s Sample) Update {
	e.at = s.At
	// The baseline is the least round trip seen, every sample: a daemon
	// started just before a load has seen a second or two of idle ones.
	for _, l := range e.links {
		if r := s.Links[l.Name]; r.RTT > 0 && (l.baseRTT == 0 || r.RTT < l.baseRTT) {
			l.baseRTT = r.RTT
		}
	}
	if !e.opened {
		e.opened, e.window = true, s.At
		for _, l := range e.links {
			l.start, l.started = s.Links[l.Name]
		}
		return e.result(false, "")
	}
	dt := s.At.Sub(e.window).Seconds()
	// A tenth of a window early is near enough: the daemon's samples a
	// second apart do not all land on the exact second.
	if s.At.Sub(e.window) < e.p.Window-e.p.Window/10 {
		return e.result(false, "")
	}
	e.window = s.At
	// The window's rates, and who was busy.
	type obs struct {
		rate     float64
		busy, ok bool
		rtt      string // why the round trip says saturated; "" not
	}
	seen := make([]obs, len(e.links))
	for i, l := range e.links {
		r, present := s.Links[l.Name]
		var o obs
		if present && l.started && r.InBytes >= l.start.InBytes && r.OutBytes >= l.start.OutBytes {
			o.ok = true
			in, out := r.InBytes-l.start.InBytes, r.OutBytes-l.start.OutBytes
			o.rate = 8 * float64(max(in, out)) / dt
			o.busy = r.Usable && o.rate >= max(e.p.BusyFloor, e.p.BusyFraction*l.est)
		}
		if present && r.RTT > 0 {
			if o.busy && l.baseRTT > 0 && r.RTT >= l.baseRTT+max(e.p.RTTRise, l.baseRTT) {
				o.rtt = fmt.Sprintf("round trip %v over a baseline of %v", r.RTT.Round(100*time.Microsecond), l.baseRTT.Round(10*time.Microsecond))
			}
			if !o.busy && r.RTT > l.baseRTT {
				// Idle round trips creep the baseline up, slowly: a new
				// route to the targets is followed within minutes (the
				// gap halves in 44 windows, about 2 minutes).
				l.baseRTT += (r.RTT - l.baseRTT) / 64
			}
		}
		l.start, l.started = r, present
		seen[i] = o
	}
	decay := 1 - math.Exp2(-dt/e.p.HalfLife.Seconds())
	for i, l := range e.links {
		o := seen[i]
		// Evidence counts from its second window in a row: one window
		// of cross traffic or of a burst allowance moves nothing.
		var why, kind string
		toward := func(k string, target float64) {
			kind = k
			switch {
			case l.kind == k && l.est == 0:
				l.est = target // the first measure of a link without a bandwidth
			case l.kind == k:
				l.est += e.p.Alpha * (target - l.est)
			default:
				why += " (a first window: evidence from the next one)"
			}
		}
		switch {
		case !o.ok:
			why = "no reading"
			l.decay(e, decay)
		case o.rate > l.est && l.est > 0:
			why = "carried more than estimated"
			toward("faster", o.rate)
		case o.busy && o.rtt != "":
			why = "saturated: " + o.rtt
			toward("saturated", o.rate)
		case !o.busy:
			why = "idle"
			l.decay(e, decay)
		default:
			why = "busy, not saturated"
			l.decay(e, decay)
		}
		if l.Bandwidth > 0 && l.est > l.Bandwidth {
			l.est = l.Bandwidth
			why += ", capped at its bandwidth"
		}
		l.kind = kind
		l.last = Estimate{Rate: o.rate, Evidence: why}
	}
	next := e.compute()
	var moved []string
	tiers := map[int]bool{}
	for _, l := range e.links {
		was, ok := e.weights[l.Name]
		now := next[l.Name]
		if !ok || abs(now-was) >= max(e.p.MinStep, int(math.Ceil(e.p.Step*float64(was)))) {
			moved = append(moved, fmt.Sprintf("%s %d->%d", l.Name, was, now))
			tiers[l.Tier] = true
		}
	}
	if len(moved) == 0 && len(next) == len(e.weights) {
		return e.result(false, "")
	}
	// The why: every estimate of the tiers that moved (a weight is its
	// estimate's share of the tier's fastest, which may be what moved).
	var ests []string
	for _, l := range e.links {
		if tiers[l.Tier] {
			ests = append(ests, fmt.Sprintf("%s %s (%s)", l.Name, rateText(l.est), l.last.Evidence))
		}
	}
	e.weights = next
	return e.result(true, strings.Join(moved, ", ")+"; estimates: "+strings.Join(ests, ", "))
}

// decay moves the estimate toward its prior: the configured bandwidth,
// or the fastest estimate of its tier.
func (l *linkState) decay(e *Estimator, f float64) {
	prior := l.Bandwidth
	if prior == 0 {
		for _, m := range e.links {
			if m.Tier == l.Tier {
				prior = max(prior, m.est)
			}
		}
	}
	if prior > 0 && l.est > 0 {
		l.est += (prior - l.est) * f
	}
}

func (e *Estimator) result(changed bool, reason string) Update {
	return Update{Ended: e.opened && e.window.Equal(e.at), Changed: changed, Weights: maps.Clone(e.weights), Reason: reason, Estimates: e.Estimates()}
}

// compute is the weights of the estimates: per tier, the fastest gets
// Scale and the others their share of it, at least MinWeight; a link
// not known yet counts as the fastest of its tier (all get Scale while
// none is known).
func (e *Estimator) compute() map[string]int {
	top := map[int]float64{}
	for _, l := range e.links {
		top[l.Tier] = max(top[l.Tier], l.est)
	}
	out := map[string]int{}
	for _, l := range e.links {
		t, est := top[l.Tier], l.est
		if est == 0 || t == 0 {
			out[l.Name] = Scale
			continue
		}
		out[l.Name] = min(Scale, max(MinWeight, int(math.Round(Scale*est/t))))
	}
	return out
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// rateText is a rate in bit/s as people write it: "19.8 Mbit/s".
func rateText(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.3g Mbit/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.3g kbit/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", bps)
}

// RateText is rateText for status and logs.
func RateText(bps float64) string { return rateText(bps) }

// WeightsText is weights as "a:100 b:25", by name.
func WeightsText(w map[string]int) string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(w)) {
		parts = append(parts, fmt.Sprintf("%s:%d", n, w[n]))
	}
	return strings.Join(parts, " ")
}
