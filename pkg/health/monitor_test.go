package health

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

// fakeISP answers probes after rtt unless it is dead, in which case the
// probe waits for its deadline like a blackholed packet would.
type fakeISP struct {
	dead     atomic.Bool
	rounds   atomic.Int64 // probes of target 0 so far: the round number
	inFlight atomic.Int64
	maxIn    atomic.Int64
	rtt      time.Duration
	// deadRound, when set, decides per round instead of dead.
	deadRound func(round int64) bool
}

func (f *fakeISP) targets(names ...string) []Target {
	out := make([]Target, len(names))
	for i, name := range names {
		out[i] = Target{Name: name, Probe: func(ctx context.Context) (time.Duration, error) {
			round := f.rounds.Load()
			if i == 0 {
				round = f.rounds.Add(1)
			}
			n := f.inFlight.Add(1)
			defer f.inFlight.Add(-1)
			for {
				m := f.maxIn.Load()
				if n <= m || f.maxIn.CompareAndSwap(m, n) {
					break
				}
			}
			dead := f.dead.Load()
			if f.deadRound != nil {
				dead = f.deadRound(round)
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

func fastConfig() config.HealthConfig {
	return config.HealthConfig{Interval: 20 * time.Millisecond, Timeout: 15 * time.Millisecond,
		DownAfter: 2, UpAfter: 3, Quorum: 1, Window: 10, HoldDown: 200 * time.Millisecond}
}

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

// Probes of a round run at the same time: four targets that each take
// 10 ms are all in flight together.
func TestRoundProbesInParallel(t *testing.T) {
	f := &fakeISP{rtt: 10 * time.Millisecond}
	cfg := fastConfig()
	events := make(chan Event, 8)
	m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b", "c", "d"), events, nil)
	defer m.Stop()
	ev := waitEvent(t, events, 5*time.Second)
	if ev.Uplink != "dsl1" || !ev.Healthy || ev.RTT != 10*time.Millisecond || ev.Loss != 0 {
		t.Errorf("first event: %+v", ev)
	}
	if got := f.maxIn.Load(); got != 4 {
		t.Errorf("at most %d probes in flight, want 4", got)
	}
}

func TestMonitorDownAndUp(t *testing.T) {
	f := &fakeISP{rtt: time.Millisecond}
	cfg := fastConfig()
	events := make(chan Event, 8)
	m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("203.0.113.1", "203.0.113.2"), events, nil)
	defer m.Stop()
	if ev := waitEvent(t, events, 5*time.Second); !ev.Healthy {
		t.Fatalf("first event: %+v", ev)
	}
	if rtt, loss := m.Stats(); rtt != time.Millisecond || loss != 0 {
		t.Errorf("stats while healthy: %v %v", rtt, loss)
	}

	f.dead.Store(true)
	ev := waitEvent(t, events, 5*time.Second)
	if ev.Healthy || ev.Reason != "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout" || ev.RTT != 0 || ev.Loss <= 0 {
		t.Fatalf("down event: %+v", ev)
	}
	if rtt, loss := m.Stats(); rtt != 0 || loss <= 0 {
		t.Errorf("stats while down: %v %v", rtt, loss)
	}

	alive := time.Now()
	f.dead.Store(false)
	ev = waitEvent(t, events, 5*time.Second)
	if !ev.Healthy || ev.Reason == "" {
		t.Fatalf("up event: %+v", ev)
	}
	// The hold-down is a lower bound, so this is safe to assert on.
	if took := ev.At.Sub(alive); took < cfg.HoldDown {
		t.Errorf("back after %v, before the %v hold-down", took, cfg.HoldDown)
	}
	select {
	case ev := <-events:
		t.Errorf("extra event %+v", ev)
	case <-time.After(10 * cfg.Interval):
	}
}

func TestMonitorEveryOtherRoundDoesNotFlap(t *testing.T) {
	f := &fakeISP{rtt: time.Millisecond, deadRound: func(r int64) bool { return r%2 == 0 }}
	cfg := fastConfig()
	events := make(chan Event, 64)
	m := StartTargets(t.Context(), Spec{Uplink: "dsl1", Config: cfg}, f.targets("a", "b"), events, nil)
	for f.rounds.Load() < 60 {
		time.Sleep(cfg.Interval)
	}
	m.Stop()
	close(events)
	var got []Event
	for ev := range events {
		got = append(got, ev)
	}
	if len(got) != 1 || !got[0].Healthy {
		t.Errorf("events over %d rounds: %+v, want the first verdict only", f.rounds.Load(), got)
	}
	if _, loss := m.Stats(); loss < 0.4 || loss > 0.6 {
		t.Errorf("loss %v, want about 0.5", loss)
	}
}

// Stop returns even when nobody reads the events, while probes are in
// flight, and leaves no goroutine behind.
func TestStopReleasesEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	var monitors []*Monitor
	for range 20 {
		f := &fakeISP{rtt: time.Millisecond}
		f.dead.Store(true)
		cfg := fastConfig()
		cfg.DownAfter = 1
		cfg.Timeout = 20 * time.Millisecond
		monitors = append(monitors, StartTargets(context.Background(), Spec{Config: cfg}, f.targets("a", "b", "c"), make(chan Event), nil))
	}
	time.Sleep(100 * time.Millisecond) // every monitor blocked on its unread verdict
	var wg sync.WaitGroup
	for _, m := range monitors {
		wg.Go(m.Stop)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop hangs")
	}
	checkGoroutines(t, before)
}

// checkGoroutines waits up to a second for the goroutine count to be back
// at before (runtime bookkeeping may take a moment).
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left over (%d before):\n%s", n-before, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A probe that answers after its deadline counts as lost.
func TestLateAnswerIsLost(t *testing.T) {
	cfg := fastConfig()
	cfg.DownAfter = 1
	late := Target{Name: "203.0.113.1", Probe: func(ctx context.Context) (time.Duration, error) {
		return time.Second, nil // says it took longer than the timeout
	}}
	events := make(chan Event, 1)
	m := StartTargets(t.Context(), Spec{Config: cfg}, []Target{late}, events, nil)
	defer m.Stop()
	if ev := waitEvent(t, events, 5*time.Second); ev.Healthy || ev.Reason != "1 round lost: 203.0.113.1 timeout" {
		t.Fatalf("%+v", ev)
	}
}

func TestStatsBeforeFirstRound(t *testing.T) {
	block := Target{Name: "x", Probe: func(ctx context.Context) (time.Duration, error) {
		<-ctx.Done()
		return 0, errors.New("stopped")
	}}
	cfg := fastConfig()
	cfg.Timeout = time.Hour // never within the test
	m := StartTargets(t.Context(), Spec{Config: cfg}, []Target{block}, make(chan Event), nil)
	if rtt, loss := m.Stats(); rtt != 0 || loss != -1 {
		t.Errorf("before any round: %v %v", rtt, loss)
	}
	m.Stop()
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
		f.dead.Store(true)
		ev := <-events
		took := ev.At.Sub(dead)
		total += took
		worst = max(worst, took)
		m.Stop()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/detection")
	b.ReportMetric(float64(worst.Milliseconds()), "ms-worst")
}
