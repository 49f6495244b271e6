package adaptive

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden; review the diff before committing it")

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// sim feeds an estimator one sample a second, as the daemon does, from
// rates the test sets per link, and keeps a readable trace of every
// window's end.
type sim struct {
	t      *testing.T
	e      *Estimator
	at     time.Time
	totals map[string]Reading
	trace  strings.Builder
	last   Update
	// changes: trace the windows that changed the weights alone.
	changes bool
}

func newSim(t *testing.T, links ...Link) *sim {
	s := &sim{t: t, e: New(DefaultParams(), links), at: t0, totals: map[string]Reading{}}
	for _, l := range links {
		s.totals[l.Name] = Reading{Usable: true}
	}
	fmt.Fprintf(&s.trace, "start: weights %s\n", WeightsText(s.e.Weights()))
	s.last = s.e.Update(Sample{At: s.at, Links: s.readings()})
	return s
}

func (s *sim) readings() map[string]Reading {
	out := map[string]Reading{}
	for n, r := range s.totals {
		out[n] = r
	}
	return out
}

// load is what one link does during a second: bit/s down (in) and the
// round trip its probes see.
type load struct {
	down float64
	rtt  time.Duration
}

// run advances secs seconds with the loads given (links not named are
// idle), tracing each window's end.
func (s *sim) run(what string, secs int, loads map[string]load) {
	fmt.Fprintf(&s.trace, "-- %s, %ds\n", what, secs)
	for range secs {
		s.at = s.at.Add(time.Second)
		for n, r := range s.totals {
			l := loads[n]
			r.InBytes += uint64(l.down / 8)
			r.OutBytes += uint64(l.down / 8 / 50) // the acknowledgements
			r.RTT = l.rtt
			s.totals[n] = r
		}
		u := s.e.Update(Sample{At: s.at, Links: s.readings()})
		s.last = u
		if !u.Ended || s.changes && !u.Changed {
			continue
		}
		var parts []string
		for _, n := range slices.Sorted(maps.Keys(u.Estimates)) {
			est := u.Estimates[n]
			parts = append(parts, fmt.Sprintf("%s rate %s est %s (%s)", n, rateText(est.Rate), rateText(est.Capacity), est.Evidence))
		}
		fmt.Fprintf(&s.trace, "+%v %s -> %s", s.at.Sub(t0), strings.Join(parts, "; "), WeightsText(u.Weights))
		if u.Changed {
			fmt.Fprintf(&s.trace, " CHANGED: %s", u.Reason)
		}
		s.trace.WriteString("\n")
	}
}

func (s *sim) weights() map[string]int { return s.e.Weights() }

func (s *sim) golden(name string) {
	s.t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got := s.trace.String()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		s.t.Fatalf("%v (go test ./pkg/adaptive -update, then review git diff)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		s.t.Errorf("trace differs from %s (-golden +got):\n%s", path, d)
	}
}

const M = 1e6

const ms = time.Millisecond

// quiet is an idle window for both links, so their probes' baseline
// round trip is known before the load.
var quiet = map[string]load{"a": {rtt: 5 * ms}, "b": {rtt: 5 * ms}}

// Equal priors (100 Mbit each), shaped at 80 and 20 and both saturated
// (their shapers' queues full: 50 ms over the baseline): each estimate
// moves toward what it carries, the weights toward 4:1 within 30 s. Then
// the slow line is upgraded to 80: it carries more than estimated and
// rises to 1:1.
func TestSaturatedLinksFollowCapacity(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 100 * M}, Link{Name: "b", Tier: 1, Bandwidth: 100 * M})
	s.run("idle", 6, quiet)
	s.run("both saturated: a delivers 80, b 20", 30, map[string]load{"a": {down: 80 * M, rtt: 55 * ms}, "b": {down: 20 * M, rtt: 55 * ms}})
	w := s.weights()
	if r := float64(w["a"]) / float64(w["b"]); r < 3.3 || r > 5.5 {
		t.Errorf("after 30 s weights %v, want about 4:1", w)
	}
	s.run("b upgraded: both deliver 80", 30, map[string]load{"a": {down: 80 * M, rtt: 55 * ms}, "b": {down: 80 * M, rtt: 55 * ms}})
	w = s.weights()
	if r := float64(w["a"]) / float64(w["b"]); r < 0.8 || r > 1.25 {
		t.Errorf("after the upgrade weights %v, want about 1:1", w)
	}
	s.golden("saturated")
}

// Downloads that follow one another (closed loop): at equal weights the
// slow link holds most of them and is full, the fast one carries less
// than it could (its queue empty) and less per unit of weight than the
// slow one. Only the slow one is saturated; the fast one keeps its prior.
func TestClosedLoopFastLinkNotSaturated(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 100 * M}, Link{Name: "b", Tier: 1, Bandwidth: 100 * M})
	s.run("idle", 6, quiet)
	s.run("a carries 12 with an empty queue, b 20 with a full one", 30,
		map[string]load{"a": {down: 12 * M, rtt: 6 * ms}, "b": {down: 20 * M, rtt: 55 * ms}})
	if w := s.weights(); w["a"] != Scale || w["b"] > 30 {
		t.Errorf("weights %v, want a %d and b about 20", w, Scale)
	}
	s.golden("closed_loop")
}

// A link that is idle says nothing about its capacity: its estimate
// does not fall, and one learnt low decays back toward its bandwidth.
func TestIdleLinkDoesNotLookSlow(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 100 * M}, Link{Name: "b", Tier: 1, Bandwidth: 100 * M})
	s.run("idle", 6, quiet)
	s.run("a saturated at 80, b idle", 30, map[string]load{"a": {down: 80 * M, rtt: 55 * ms}, "b": {rtt: 5 * ms}})
	if w := s.weights(); w["b"] != Scale || w["a"] > 90 {
		t.Errorf("idle b: weights %v, want b %d (its prior) and a about 80", w, Scale)
	}
	s.run("a saturated at 80, b a trickle of 1 Mbit/s on a slow route", 30,
		map[string]load{"a": {down: 80 * M, rtt: 55 * ms}, "b": {down: 1 * M, rtt: 80 * ms}})
	if w := s.weights(); w["b"] != Scale {
		t.Errorf("b with a trickle: weights %v, want b %d", w, Scale)
	}
	s.run("both saturated: b at 10", 30, map[string]load{"a": {down: 80 * M, rtt: 55 * ms}, "b": {down: 10 * M, rtt: 55 * ms}})
	low := s.weights()["b"]
	if low > 30 {
		t.Errorf("b saturated at 10: weight %d, want it low", low)
	}
	s.changes = true
	s.run("both idle for 30 minutes (changes only)", 1800, quiet)
	if c := s.last.Estimates["b"].Capacity; c < 80*M || s.weights()["b"] < 70 {
		t.Errorf("b idle for 30 minutes: estimate %s, weights %v, want back near its bandwidth", rateText(c), s.weights())
	}
	s.golden("idle")
}

// One window's burst moves an estimate by Alpha of the gap at most, and
// small moves change no weight (the table is not replaced for them).
func TestBurstAndHysteresis(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 100 * M}, Link{Name: "b", Tier: 1, Bandwidth: 100 * M})
	s.run("idle", 6, quiet)
	s.run("both busy at 50, queues empty", 9, map[string]load{"a": {down: 50 * M, rtt: 5 * ms}, "b": {down: 50 * M, rtt: 5 * ms}})
	if s.last.Changed || s.weights()["a"] != Scale || s.weights()["b"] != Scale {
		t.Errorf("equal busy links: %+v", s.last)
	}
	s.run("one window of b saturated at 40 (a burst of cross traffic)", 3,
		map[string]load{"a": {down: 50 * M, rtt: 5 * ms}, "b": {down: 40 * M, rtt: 60 * ms}})
	if c := s.last.Estimates["b"].Capacity; c != 100*M {
		t.Errorf("one window moved b's estimate to %s, want it unmoved", rateText(c))
	}
	s.run("both busy at 50 again", 6, map[string]load{"a": {down: 50 * M, rtt: 5 * ms}, "b": {down: 50 * M, rtt: 5 * ms}})
	if w := s.weights(); w["b"] != Scale || s.last.Estimates["b"].Capacity != 100*M {
		t.Errorf("after the burst: weights %v", w)
	}
	s.run("two windows of b saturated at 40", 6, map[string]load{"a": {down: 50 * M, rtt: 5 * ms}, "b": {down: 40 * M, rtt: 60 * ms}})
	if c := s.last.Estimates["b"].Capacity; c < 75*M || c > 77*M {
		t.Errorf("two windows moved b's estimate to %s, want %.0f%% of the way", rateText(c), 100*DefaultParams().Alpha)
	}
	// A move of less than Step is not a change.
	e := New(DefaultParams(), []Link{{Name: "a", Tier: 1, Bandwidth: 100 * M}, {Name: "b", Tier: 1, Bandwidth: 95 * M}})
	if w := e.Weights(); w["b"] != 95 {
		t.Fatalf("prior weights %v", w)
	}
	e.Update(Sample{At: t0, Links: map[string]Reading{"a": {Usable: true}, "b": {Usable: true}}})
	u := e.Update(Sample{At: t0.Add(3 * time.Second), Links: map[string]Reading{"a": {Usable: true}, "b": {Usable: true}}})
	if u.Changed {
		t.Errorf("no traffic changed the weights: %+v", u)
	}
	s.golden("burst")
}

// A busy link's round trip rising over its baseline says it is
// saturated; a small rise does not; a baseline learnt under load is
// high, and the first idle round trips bring it down.
func TestRoundTripSaysSaturated(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 100 * M}, Link{Name: "b", Tier: 1, Bandwidth: 100 * M})
	s.run("b already busy at 30 with a full queue: its baseline is 60 ms", 6, map[string]load{"a": {rtt: 10 * time.Millisecond}, "b": {down: 30 * M, rtt: 60 * time.Millisecond}})
	if ev := s.last.Estimates["b"].Evidence; ev != "busy, not saturated" {
		t.Errorf("b with no idle baseline: %q", ev)
	}
	s.run("idle, round trips 10 ms", 6, map[string]load{"a": {rtt: 10 * time.Millisecond}, "b": {rtt: 10 * time.Millisecond}})
	s.run("b alone busy at 30, its round trip 60 ms", 30, map[string]load{"a": {rtt: 10 * time.Millisecond}, "b": {down: 30 * M, rtt: 60 * time.Millisecond}})
	if w := s.weights(); w["b"] > 40 {
		t.Errorf("b saturated by its round trip: weights %v, want b about 30", w)
	}
	s.run("b alone busy at 30, round trip 12 ms (not saturated)", 12, map[string]load{"a": {rtt: 10 * time.Millisecond}, "b": {down: 30 * M, rtt: 12 * time.Millisecond}})
	if ev := s.last.Estimates["b"].Evidence; ev != "busy, not saturated" {
		t.Errorf("b at 12 ms: %q", ev)
	}
	s.golden("rtt")
}

// The configured bandwidth caps the estimate; without one a link starts
// unknown (equal weights) and learns from its first busy window; tiers
// are scaled apart.
func TestCapUnknownAndTiers(t *testing.T) {
	s := newSim(t, Link{Name: "a", Tier: 1, Bandwidth: 50 * M}, Link{Name: "b", Tier: 1}, Link{Name: "c", Tier: 2, Bandwidth: 10 * M})
	if w := s.weights(); w["a"] != Scale || w["b"] != Scale || w["c"] != Scale {
		t.Fatalf("prior %v, want all %d (b unknown counts as the fastest, c alone in its tier)", w, Scale)
	}
	s.run("idle", 6, map[string]load{"a": {rtt: 5 * ms}, "b": {rtt: 5 * ms}, "c": {rtt: 5 * ms}})
	s.run("a carries 90 (over its bandwidth), b 20 and c 10 saturated", 30,
		map[string]load{"a": {down: 90 * M, rtt: 5 * ms}, "b": {down: 20 * M, rtt: 50 * ms}, "c": {down: 10 * M, rtt: 50 * ms}})
	if c := s.last.Estimates["a"].Capacity; c > 50*M {
		t.Errorf("a's estimate %s, above its bandwidth", rateText(c))
	}
	if w := s.weights(); w["c"] != Scale || w["b"] > 50 {
		t.Errorf("weights %v: c alone in tier 2 keeps %d, b at 20 of a's 50 is low", w, Scale)
	}
	s.golden("cap")
}

// Counters that shrink (an interface re-created) or vanish restart that
// link's window without evidence.
func TestCountersReset(t *testing.T) {
	e := New(DefaultParams(), []Link{{Name: "a", Tier: 1, Bandwidth: 100 * M}, {Name: "b", Tier: 1, Bandwidth: 100 * M}})
	e.Update(Sample{At: t0, Links: map[string]Reading{"a": {InBytes: 1e9, Usable: true}, "b": {InBytes: 1e9, Usable: true}}})
	u := e.Update(Sample{At: t0.Add(3 * time.Second), Links: map[string]Reading{"a": {InBytes: 1e9 + 30e6, Usable: true}, "b": {InBytes: 5, Usable: true}}})
	if ev := u.Estimates["b"].Evidence; ev != "no reading" || u.Changed {
		t.Errorf("shrunk counters: %+v", u)
	}
	u = e.Update(Sample{At: t0.Add(6 * time.Second), Links: map[string]Reading{"a": {InBytes: 1e9 + 60e6, Usable: true}}})
	if ev := u.Estimates["b"].Evidence; ev != "no reading" || u.Changed {
		t.Errorf("missing interface: %+v", u)
	}
	// Fewer links: the weights are handed out again.
	e.SetLinks([]Link{{Name: "a", Tier: 1, Bandwidth: 100 * M}})
	if w := e.Weights(); len(w) != 1 || w["a"] != Scale {
		t.Errorf("after SetLinks: %v", w)
	}
}

func TestParseBandwidth(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		err  string
	}{
		{"100Mbit", 100e6, ""},
		{"2.5Gbit", 2.5e9, ""},
		{"512kbit", 512e3, ""},
		{"100 Mbit/s", 100e6, ""},
		{"1000bit", 1000, ""},
		{"100", 0, `"100" has no unit: want one of bit, kbit, Mbit, Gbit (bits per second, powers of 1000)`},
		{"100MB", 0, `"100MB": unit "MB" is not one of bit, kbit, Mbit, Gbit (bits per second, powers of 1000)`},
		{"100mbit", 0, `"100mbit": unit "mbit" is not one of bit, kbit, Mbit, Gbit (bits per second, powers of 1000)`},
		{"Mbit", 0, `"Mbit" is not a bandwidth: want a number and a unit (bit, kbit, Mbit, Gbit (bits per second, powers of 1000)), e.g. "100Mbit"`},
		{"1.2.3Mbit", 0, `"1.2.3Mbit": "1.2.3" is not a number`},
		{"0Mbit", 0, `"0Mbit": a bandwidth must be 1kbit..1000Gbit`},
		{"2000Gbit", 0, `"2000Gbit": a bandwidth must be 1kbit..1000Gbit`},
		{"1.5bit", 0, `"1.5bit": a bandwidth must be 1kbit..1000Gbit`},
		{"1000.5bit", 0, `"1000.5bit" is not a whole number of bit/s`},
	} {
		got, err := ParseBandwidth(c.in)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if got != c.want || msg != c.err {
			t.Errorf("ParseBandwidth(%q) = %d, %q; want %d, %q", c.in, got, msg, c.want, c.err)
		}
	}
}
