package health

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The monitor tests run in synctest bubbles: the monitor's ticker, the
// probes' deadlines and the fake ISP's round trips all run on the bubble's
// fake clock, which moves only when every goroutine of the bubble is
// durably blocked. So they use the default timings (500 ms interval,
// 400 ms timeout, 2 s hold-down), take no real time, and can assert the
// exact instants the judge's rules define: nothing depends on how loaded
// the machine is.

// allTargets, stored in fakeISP.dead, kills every target.
const allTargets = ^uint64(0)

// fakeISP answers probes after rtt unless the target is dead, in which
// case the probe waits for its deadline like a blackholed packet would.
// Whether a target is dead is decided when its probe starts: a probe sent
// before the ISP died gets its answer.
type fakeISP struct {
	rtt  time.Duration
	dead atomic.Uint64 // bit i set: target i is dead; allTargets: all of them
	// deadAt, when set, decides instead of dead, by the time since
	// targets was called (in a bubble: since the first round started).
	deadAt func(elapsed time.Duration) bool

	rounds   atomic.Int64 // probes of target 0 so far: the rounds started
	inFlight atomic.Int64
	maxIn    atomic.Int64
}

func (f *fakeISP) targets(names ...string) []Target {
	start := time.Now()
	out := make([]Target, len(names))
	for i, name := range names {
		out[i] = Target{Name: name, Probe: func(ctx context.Context) (time.Duration, error) {
			if i == 0 {
				f.rounds.Add(1)
			}
			n := f.inFlight.Add(1)
			defer f.inFlight.Add(-1)
			for {
				m := f.maxIn.Load()
				if n <= m || f.maxIn.CompareAndSwap(m, n) {
					break
				}
			}
			dead := f.dead.Load()&(1<<i) != 0
			if f.deadAt != nil {
				dead = f.deadAt(time.Since(start))
			}
			if dead {
				<-ctx.Done()
				return 0, ctx.Err()
			}
			select {
			case <-time.After(f.rtt):
				return f.rtt, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}}
	}
	return out
}

// waitEvent receives the next verdict. In a bubble within is virtual
// time: a verdict that never comes fails the test at once.
func waitEvent(t *testing.T, events <-chan Event, within time.Duration) Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
		return Event{}
	}
}

// noEvent fails if a verdict is waiting once every other goroutine of the
// bubble is durably blocked.
func noEvent(t *testing.T, events <-chan Event) {
	t.Helper()
	synctest.Wait()
	select {
	case ev := <-events:
		t.Errorf("unexpected event %+v", ev)
	default:
	}
}

// sleepUntil sleeps until at on the bubble's clock.
func sleepUntil(at time.Time) {
	time.Sleep(time.Until(at))
}

var goroutineHeader = regexp.MustCompile(`(?m)^goroutine \d+ \[[^\]]*, synctest bubble (\d+)\]:$`)

// bubbleGoroutines returns the goroutines of the caller's synctest bubble,
// the caller and the bubble's own included: how many and their stacks.
func bubbleGoroutines(t *testing.T) (int, string) {
	t.Helper()
	buf := make([]byte, 1<<16)
	own := goroutineHeader.FindStringSubmatch(string(buf[:runtime.Stack(buf, false)]))
	if own == nil {
		t.Fatal("not in a synctest bubble")
	}
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var stacks []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if m := goroutineHeader.FindStringSubmatch(g); m != nil && m[1] == own[1] {
			stacks = append(stacks, g)
		}
	}
	return len(stacks), strings.Join(stacks, "\n\n")
}

// wantGoroutines waits until every other goroutine of the bubble is
// durably blocked, then checks that the bubble has want more than base
// (what bubbleGoroutines said when the test began): an exact count.
func wantGoroutines(t *testing.T, base, want int, when string) {
	t.Helper()
	synctest.Wait()
	if n, stacks := bubbleGoroutines(t); n-base != want {
		t.Errorf("%s: %d goroutines, want %d:\n%s", when, n-base, want, stacks)
	}
}

// Probes of a round run at the same time, one goroutine each, and none
// outlives its round: four targets that each take 10 ms are all in flight
// together, and the round is over 10 ms after it started.
func TestRoundProbesInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base, _ := bubbleGoroutines(t)
		t0 := time.Now()
		cfg := defaults()
		f := &fakeISP{rtt: 10 * time.Millisecond}
		events := make(chan Event, 8)
		m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b", "c", "d"), events, nil)
		defer m.Stop()
		wantGoroutines(t, base, 1+4, "during the first round")
		if n := f.inFlight.Load(); n != 4 {
			t.Errorf("%d probes in flight, want 4", n)
		}
		noEvent(t, events)

		ev := waitEvent(t, events, time.Minute)
		if got := ev.At.Sub(t0); got != f.rtt {
			t.Errorf("first verdict at %v, want %v", got, f.rtt)
		}
		if ev.Uplink != "dsl1" || !ev.Healthy || ev.RTT != 10*time.Millisecond || ev.Loss != 0 ||
			ev.Reason != "first round good: 4 of 4 targets answered, median 10ms" {
			t.Errorf("first event: %+v", ev)
		}
		wantGoroutines(t, base, 1, "between rounds")
		if got := f.maxIn.Load(); got != 4 {
			t.Errorf("at most %d probes in flight, want 4", got)
		}

		// Rounds start at a fixed rate, one interval apart.
		sleepUntil(t0.Add(cfg.Interval - time.Nanosecond))
		synctest.Wait()
		if n := f.rounds.Load(); n != 1 || f.inFlight.Load() != 0 {
			t.Errorf("just before the second round: %d rounds, %d probes in flight", n, f.inFlight.Load())
		}
		sleepUntil(t0.Add(cfg.Interval))
		wantGoroutines(t, base, 1+4, "during the second round")
		if n := f.rounds.Load(); n != 2 || f.inFlight.Load() != 4 {
			t.Errorf("second round: %d rounds, %d probes in flight", n, f.inFlight.Load())
		}
	})
}

// The ISP dies at some moment of the round cycle and comes back at some
// other: the verdicts come at the instants the defaults define (see
// config's DefaultHealth* constants), with the figures of the rounds that
// decided them. Dead: the next round is the first lost one, the
// down_after-th is lost timeout after it started, so the verdict comes
//
//	(interval - phase) + interval*(down_after-1) + timeout
//
// after the ISP died: 0.9 s when it dies just before a round, 1.4 s just
// after one (after its answers: a probe decides when it starts). Back:
// the next round is the first good one, the 5th good round starts
// hold_down after it (at 500 ms), and its answers bring the uplink back
//
//	(interval - phase) + hold_down + rtt
//
// after the ISP did: 2 s + rtt to 2.5 s + rtt.
func TestMonitorDownAndUp(t *testing.T) {
	cfg := defaults()
	iv := cfg.Interval
	const rtt = time.Millisecond
	best := iv*time.Duration(cfg.DownAfter-1) + cfg.Timeout
	worst := best + iv
	for _, c := range []struct{ die, back time.Duration }{
		{rtt, time.Nanosecond}, // just after the answers; just after a lost round started
		{100 * time.Millisecond, 100 * time.Millisecond},
		{250 * time.Millisecond, cfg.Timeout - time.Nanosecond}, // back just before the lost round times out
		{cfg.Timeout, cfg.Timeout},                              // back as it times out
		{499 * time.Millisecond, 450 * time.Millisecond},        // back between rounds
		{iv - time.Nanosecond, iv - time.Nanosecond},            // just before a round
	} {
		t.Run(fmt.Sprintf("dies at +%v, back at +%v", c.die, c.back), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := &fakeISP{rtt: rtt}
				events := make(chan Event, 8)
				m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("203.0.113.1", "203.0.113.2"), events, nil)
				defer m.Stop()
				if ev := waitEvent(t, events, time.Minute); !ev.Healthy || ev.At.Sub(t0) != rtt {
					t.Fatalf("first event at %v: %+v", ev.At.Sub(t0), ev)
				}
				if r, loss := m.Stats(); r != rtt || loss != 0 {
					t.Errorf("stats while healthy: %v %v", r, loss)
				}

				// Dies in the third round's cycle: rounds 4 and 5 are lost.
				dead := t0.Add(2*iv + c.die)
				sleepUntil(dead)
				f.dead.Store(allTargets)
				ev := waitEvent(t, events, time.Minute)
				if ev.Healthy || ev.Reason != "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout" || ev.RTT != 0 || ev.Loss != 2.0/5 {
					t.Fatalf("down event: %+v", ev)
				}
				took := ev.At.Sub(dead)
				if want := iv - c.die + best; took != want {
					t.Errorf("down after %v, want %v", took, want)
				}
				if took <= best || took >= worst {
					t.Errorf("down after %v, want between %v and %v", took, best, worst)
				}
				if r, loss := m.Stats(); r != 0 || loss != 2.0/5 {
					t.Errorf("stats while down: %v %v", r, loss)
				}

				// Back in the 7th round's cycle (the verdict came in the 5th's).
				alive := t0.Add(6*iv + c.back)
				sleepUntil(alive)
				noEvent(t, events)
				f.dead.Store(0)
				ev = waitEvent(t, events, time.Minute)
				if !ev.Healthy || ev.Reason != "5 rounds good, held down 2s" || ev.RTT != rtt || ev.Loss != 0 {
					t.Fatalf("up event: %+v", ev)
				}
				took = ev.At.Sub(alive)
				if want := iv - c.back + cfg.HoldDown + rtt; took != want {
					t.Errorf("back after %v, want %v", took, want)
				}
				if took <= cfg.HoldDown+rtt || took >= iv+cfg.HoldDown+rtt {
					t.Errorf("back after %v, want between %v and %v", took, cfg.HoldDown+rtt, iv+cfg.HoldDown+rtt)
				}
				if r, loss := m.Stats(); r != rtt || loss != 0 {
					t.Errorf("stats after recovery: %v %v", r, loss)
				}
				sleepUntil(ev.At.Add(10 * iv))
				noEvent(t, events)
			})
		})
	}
}

// An ISP that answers every other round does not take the uplink down:
// over 60 rounds the only verdict is the first, and half the probes of
// the window are lost.
func TestMonitorEveryOtherRoundDoesNotFlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		cfg := defaults()
		// Rounds 2, 4, 6...: round n starts (n-1) intervals in.
		f := &fakeISP{rtt: time.Millisecond, deadAt: func(e time.Duration) bool { return e/cfg.Interval%2 == 1 }}
		events := make(chan Event, 64)
		m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b"), events, nil)
		sleepUntil(t0.Add(60*cfg.Interval - time.Nanosecond)) // the 60th round is over, the 61st not started
		synctest.Wait()
		m.Stop()
		close(events)
		var got []Event
		for ev := range events {
			got = append(got, ev)
		}
		if n := f.rounds.Load(); n != 60 {
			t.Errorf("%d rounds, want 60", n)
		}
		if len(got) != 1 || !got[0].Healthy || got[0].At.Sub(t0) != f.rtt {
			t.Errorf("events over %d rounds: %+v, want the first verdict only", f.rounds.Load(), got)
		}
		if _, loss := m.Stats(); loss != 0.5 {
			t.Errorf("loss %v, want 0.5", loss)
		}
	})
}

// The first verdict: healthy after the first good round, at once and
// without hold-down (the uplink was never out of service); unhealthy
// after down_after lost rounds, and nothing before.
func TestMonitorFirstVerdict(t *testing.T) {
	cfg := defaults()
	const rtt = time.Millisecond
	for _, c := range []struct {
		name      string
		deadUntil time.Duration // the ISP is dead from the start until then
		at        time.Duration // when the verdict comes
		healthy   bool
		reason    string
	}{
		{"alive", 0, rtt, true, "first round good: 2 of 2 targets answered, median 1ms"},
		{"dead", time.Hour, cfg.Interval + cfg.Timeout, false, "2 rounds lost: a timeout, b timeout"},
		{"dead for one round", cfg.Timeout, cfg.Interval + rtt, true, "first round good: 2 of 2 targets answered, median 1ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := &fakeISP{rtt: rtt}
				if c.deadUntil > 0 {
					f.dead.Store(allTargets)
				}
				events := make(chan Event, 8)
				m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b"), events, nil)
				defer m.Stop()
				if c.deadUntil > 0 {
					// The first round is lost: no verdict, the daemon goes
					// on by link state.
					sleepUntil(t0.Add(cfg.Timeout))
					noEvent(t, events)
					if r, loss := m.Stats(); r != 0 || loss != 1 {
						t.Errorf("stats after a lost round: %v %v", r, loss)
					}
					if c.deadUntil < time.Hour {
						f.dead.Store(0)
					}
				}
				ev := waitEvent(t, events, time.Minute)
				if ev.Healthy != c.healthy || ev.Reason != c.reason || ev.At.Sub(t0) != c.at {
					t.Errorf("first verdict at %v: %+v, want healthy %v at %v: %q", ev.At.Sub(t0), ev, c.healthy, c.at, c.reason)
				}
				// Nothing more while nothing changes.
				sleepUntil(ev.At.Add(20 * cfg.Interval))
				noEvent(t, events)
			})
		})
	}
}

// With a quorum of 2 one dead target of 3 keeps the uplink up, a second
// takes it down. A dead target costs one timeout per round, not one per
// dead target: each round, and so each verdict, comes timeout after the
// round started.
func TestMonitorQuorum(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		cfg := defaults()
		cfg.Quorum = 2
		iv := cfg.Interval
		f := &fakeISP{rtt: time.Millisecond}
		f.dead.Store(1 << 2) // c
		events := make(chan Event, 8)
		m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b", "c"), events, nil)
		defer m.Stop()
		ev := waitEvent(t, events, time.Minute)
		if !ev.Healthy || ev.Reason != "first round good: 2 of 3 targets answered, median 1ms" ||
			ev.RTT != time.Millisecond || !near(ev.Loss, 1.0/3) || ev.At.Sub(t0) != cfg.Timeout {
			t.Fatalf("first verdict at %v: %+v", ev.At.Sub(t0), ev)
		}

		// b dies in the 3rd round's cycle: rounds 4 and 5 miss the quorum.
		sleepUntil(t0.Add(2*iv + 100*time.Millisecond))
		f.dead.Store(1<<1 | 1<<2)
		ev = waitEvent(t, events, time.Minute)
		if ev.Healthy || ev.Reason != "2 rounds bad: 1 of 3 targets answered (quorum 2): b timeout, c timeout" ||
			ev.RTT != time.Millisecond || !near(ev.Loss, (3*(1.0/3)+2*(2.0/3))/5) || ev.At.Sub(t0) != 4*iv+cfg.Timeout {
			t.Fatalf("down at %v: %+v", ev.At.Sub(t0), ev)
		}

		// b is back in the 6th round's cycle: rounds 7 to 11 are good,
		// and the 11th is over when c's probe times out.
		sleepUntil(t0.Add(5*iv + 100*time.Millisecond))
		f.dead.Store(1 << 2)
		ev = waitEvent(t, events, time.Minute)
		if !ev.Healthy || ev.Reason != "5 rounds good, held down 2s" || !near(ev.Loss, 1.0/3) ||
			ev.At.Sub(t0) != 10*iv+cfg.Timeout {
			t.Fatalf("up at %v: %+v", ev.At.Sub(t0), ev)
		}
		sleepUntil(ev.At.Add(20 * iv))
		noEvent(t, events)
	})
}

// With max_loss a half-dead link goes down once the window is full
// although every round meets the quorum; while down, each round is judged
// on its own loss, and after recovery the outage has left the window, so
// it does not go straight back down.
func TestMonitorLossWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		cfg := defaults()
		cfg.MaxLoss = 30
		iv := cfg.Interval
		f := &fakeISP{rtt: time.Millisecond}
		f.dead.Store(1 << 1) // b
		events := make(chan Event, 8)
		m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b"), events, nil)
		defer m.Stop()
		ev := waitEvent(t, events, time.Minute)
		if !ev.Healthy || ev.Reason != "first round good: 1 of 2 targets answered, median 1ms" || ev.Loss != 0.5 ||
			ev.At.Sub(t0) != cfg.Timeout {
			t.Fatalf("first verdict at %v: %+v", ev.At.Sub(t0), ev)
		}

		// The window is full at the 10th round: the 10th and 11th are bad.
		ev = waitEvent(t, events, time.Minute)
		if ev.Healthy || ev.Reason != "2 rounds bad: 50% of probes lost over 10 rounds (max_loss 30%)" ||
			ev.RTT != time.Millisecond || ev.Loss != 0.5 || ev.At.Sub(t0) != 10*iv+cfg.Timeout {
			t.Fatalf("down at %v: %+v", ev.At.Sub(t0), ev)
		}

		// b is back in the 12th round's cycle, which is bad on its own
		// loss; rounds 13 to 17 are good.
		sleepUntil(t0.Add(11*iv + 100*time.Millisecond))
		f.dead.Store(0)
		ev = waitEvent(t, events, time.Minute)
		if !ev.Healthy || ev.Reason != "5 rounds good, held down 2s" || ev.Loss != 0 || ev.At.Sub(t0) != 16*iv+f.rtt {
			t.Fatalf("up at %v: %+v", ev.At.Sub(t0), ev)
		}
		sleepUntil(ev.At.Add(20 * iv))
		noEvent(t, events)
	})
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// Stop returns at once, while probes are in flight and while the monitor
// waits for someone to read its verdict, and leaves no goroutine behind.
// In a round a monitor has one goroutine per target besides its own,
// between rounds its own alone.
func TestStopReleasesEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base, _ := bubbleGoroutines(t)
		t0 := time.Now()
		cfg := defaults()
		cfg.DownAfter = 1
		var monitors []*Monitor
		for range 20 {
			f := &fakeISP{rtt: time.Millisecond}
			f.dead.Store(allTargets)
			monitors = append(monitors, StartTargets(context.Background(), Spec{Config: cfg}, f.targets("a", "b", "c"), make(chan Event), nil))
		}
		sleepUntil(t0.Add(cfg.Timeout / 2))
		wantGoroutines(t, base, 20*(1+3), "mid-round")
		stopAll(t, monitors[:10])
		wantGoroutines(t, base, 10*(1+3), "10 monitors stopped mid-round")

		// The round is lost: the others wait for their unread verdicts,
		// and go on waiting whatever the ticker says.
		sleepUntil(t0.Add(cfg.Timeout))
		wantGoroutines(t, base, 10, "verdicts unread")
		sleepUntil(t0.Add(5 * cfg.Interval))
		wantGoroutines(t, base, 10, "verdicts unread 2.5 s later")
		stopAll(t, monitors[10:])
		wantGoroutines(t, base, 0, "all stopped")
	})
}

// stopAll stops the monitors at the same time and checks that no time
// passes before they all return.
func stopAll(t *testing.T, monitors []*Monitor) {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	for _, m := range monitors {
		wg.Go(m.Stop)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Stop hangs")
	}
	if took := time.Since(start); took != 0 {
		t.Errorf("Stop took %v", took)
	}
}

// A probe that answers after its deadline counts as lost.
func TestLateAnswerIsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		cfg := defaults()
		cfg.DownAfter = 1
		late := Target{Name: "203.0.113.1", Probe: func(ctx context.Context) (time.Duration, error) {
			return time.Second, nil // says it took longer than the timeout
		}}
		events := make(chan Event, 1)
		m := StartTargets(t.Context(), Spec{Config: cfg}, []Target{late}, events, nil)
		defer m.Stop()
		ev := waitEvent(t, events, time.Minute)
		if ev.Healthy || ev.Reason != "1 round lost: 203.0.113.1 timeout" || !ev.At.Equal(t0) {
			t.Fatalf("at %v: %+v", ev.At.Sub(t0), ev)
		}
	})
}

// Stats says "no round yet" until the first round is over, even a lost
// one that gives no verdict.
func TestStatsBeforeFirstRound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		cfg := defaults()
		block := Target{Name: "x", Probe: func(ctx context.Context) (time.Duration, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		}}
		m := StartTargets(t.Context(), Spec{Config: cfg}, []Target{block}, make(chan Event), nil)
		defer m.Stop()
		sleepUntil(t0.Add(cfg.Timeout - time.Nanosecond))
		synctest.Wait()
		if rtt, loss := m.Stats(); rtt != 0 || loss != -1 {
			t.Errorf("before any round: %v %v", rtt, loss)
		}
		sleepUntil(t0.Add(cfg.Timeout))
		synctest.Wait()
		if rtt, loss := m.Stats(); rtt != 0 || loss != 1 {
			t.Errorf("after a lost round: %v %v", rtt, loss)
		}
	})
}

// BenchmarkDetection prints how long the defaults take to notice a
// blackhole that starts at a random moment of the round cycle (fake
// probes, real timers); run with -bench Detection. The worst case by
// construction is interval + interval*(down_after-1) + timeout = 1.4 s.
func BenchmarkDetection(b *testing.B) {
	var total, worst time.Duration
	for i := 0; i < b.N; i++ {
		f := &fakeISP{rtt: time.Millisecond}
		events := make(chan Event, 4)
		m := StartTargets(context.Background(), Spec{Config: defaults()}, f.targets("a", "b"), events, nil)
		<-events // first verdict
		time.Sleep(time.Duration(i%10) * defaults().Interval / 10)
		dead := time.Now()
		f.dead.Store(allTargets)
		ev := <-events
		took := ev.At.Sub(dead)
		total += took
		worst = max(worst, took)
		m.Stop()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/detection")
	b.ReportMetric(float64(worst.Milliseconds()), "ms-worst")
}
