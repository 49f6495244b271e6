package health

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

func defaults() config.HealthConfig {
	return config.HealthConfig{Method: "icmp", Interval: config.DefaultHealthInterval, Timeout: config.DefaultHealthTimeout,
		DownAfter: config.DefaultHealthDownAfter, UpAfter: config.DefaultHealthUpAfter, Quorum: 1,
		Window: config.DefaultHealthWindow, HoldDown: config.DefaultHealthHoldDown}
}

var (
	ok   = []result{{target: "203.0.113.1", rtt: 5 * time.Millisecond}, {target: "203.0.113.2", rtt: 7 * time.Millisecond}}
	lost = []result{{target: "203.0.113.1", err: errors.New("read ip4 0.0.0.0: i/o timeout")}, {target: "203.0.113.2", err: errors.New("i/o timeout")}}
	half = []result{ok[0], lost[1]}
)

// stepper feeds a judge one round every interval of made-up time.
type stepper struct {
	j   *judge
	now time.Time
	cfg config.HealthConfig
}

func newStepper(cfg config.HealthConfig) *stepper {
	return &stepper{j: newJudge(cfg), now: time.Unix(1000, 0), cfg: cfg}
}

func (s *stepper) step(r []result) verdict {
	s.now = s.now.Add(s.cfg.Interval)
	return s.j.round(r, s.now)
}

func TestFirstVerdict(t *testing.T) {
	s := newStepper(defaults())
	v := s.step(ok)
	if !v.changed || !v.healthy || v.reason != "first round good: 2 of 2 targets answered, median 6ms" {
		t.Fatalf("first good round: %+v", v)
	}
	if v.rtt != 6*time.Millisecond || v.loss != 0 || v.answered != 2 {
		t.Errorf("figures: %+v", v)
	}

	// Starting dead: no verdict after one lost round (the daemon keeps
	// going by link state), unhealthy after down_after.
	s = newStepper(defaults())
	if v := s.step(lost); v.changed {
		t.Fatalf("verdict after one lost round: %+v", v)
	}
	v = s.step(lost)
	if !v.changed || v.healthy || v.reason != "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout" {
		t.Fatalf("second lost round: %+v", v)
	}
	if v.loss != 1 || v.rtt != 0 {
		t.Errorf("figures: %+v", v)
	}

	// One lost round, then good: healthy at once, never down.
	s = newStepper(defaults())
	s.step(lost)
	if v := s.step(ok); !v.changed || !v.healthy {
		t.Fatalf("good round after a lost one: %+v", v)
	}
}

func TestDownAfterAndRecovery(t *testing.T) {
	s := newStepper(defaults())
	s.step(ok)
	if v := s.step(lost); v.changed {
		t.Fatal("down after one lost round")
	}
	v := s.step(lost)
	if !v.changed || v.healthy || v.reason != "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout" {
		t.Fatalf("second lost round: %+v", v)
	}
	// More lost rounds: no more events.
	for range 5 {
		if v := s.step(lost); v.changed {
			t.Fatalf("repeated verdict: %+v", v)
		}
	}
	// Recovery: three good rounds and 2 s of hold-down since the first.
	upAt := 0
	for i := 1; i <= 10; i++ {
		if v := s.step(ok); v.changed {
			if !v.healthy || v.reason != "5 rounds good, held down 2s" {
				t.Fatalf("recovery: %+v", v)
			}
			upAt = i
			break
		}
	}
	// Good from round 1, 2 s later is round 5 at 500 ms.
	if upAt != 5 {
		t.Errorf("came back after %d good rounds, want 5 (hold-down 2 s at 500 ms)", upAt)
	}
}

func TestUpAfterWithoutHoldDown(t *testing.T) {
	cfg := defaults()
	cfg.HoldDown = 0
	s := newStepper(cfg)
	s.step(lost)
	s.step(lost)
	s.step(ok)
	s.step(ok)
	s.step(lost) // breaks the good run
	s.step(ok)
	s.step(ok)
	if v := s.step(ok); !v.changed || !v.healthy || v.reason != "3 rounds good" {
		t.Fatalf("third good round in a row: %+v", v)
	}
}

// An ISP that answers every other round must not take the uplink down and
// up again: down_after 2 never sees two lost rounds in a row.
func TestEveryOtherRoundLostDoesNotFlap(t *testing.T) {
	for _, first := range []string{"good", "lost"} {
		s := newStepper(defaults())
		events := 0
		for i := range 200 {
			r := ok
			if (i%2 == 1) == (first == "good") {
				r = lost
			}
			if v := s.step(r); v.changed {
				events++
				if !v.healthy {
					t.Fatalf("first %s, round %d: went down: %q", first, i, v.reason)
				}
			}
		}
		if events != 1 {
			t.Errorf("first %s: %d events, want the first verdict only", first, events)
		}
	}
}

// Consecutive counters alone let a half-dead link hide behind its good
// rounds; with max_loss the window catches it, and one good round does not
// clear the window.
func TestHalfDeadLinkFailsOnLoss(t *testing.T) {
	cfg := defaults()
	cfg.MaxLoss = 30
	s := newStepper(cfg)
	downAt := 0
	for i := 1; i <= 30 && downAt == 0; i++ {
		r := half // quorum 1 is met every round
		if i%3 == 0 {
			r = ok
		}
		if v := s.step(r); v.changed && !v.healthy {
			if !strings.Contains(v.reason, "of probes lost over 10 rounds (max_loss 30%)") {
				t.Fatalf("reason %q", v.reason)
			}
			downAt = i
		}
	}
	if downAt == 0 {
		t.Fatal("33% loss never took the uplink down")
	}
	// Still half dead: it stays down, whatever the good rounds between.
	for i := range 40 {
		r := half
		if i%3 == 0 {
			r = ok
		}
		if v := s.step(r); v.changed {
			t.Fatalf("half-dead link came back: %+v", v)
		}
	}
}

// After an outage the window is full of losses; recovery must not wait for
// it to drain, nor go straight back down because of it.
func TestRecoveryDoesNotWaitForTheWindow(t *testing.T) {
	cfg := defaults()
	cfg.MaxLoss = 20
	s := newStepper(cfg)
	s.step(ok)
	for range 20 {
		s.step(lost)
	}
	upAt := 0
	for i := 1; i <= 30; i++ {
		v := s.step(ok)
		if v.changed {
			if !v.healthy {
				t.Fatalf("round %d: %+v", i, v)
			}
			if upAt != 0 {
				t.Fatalf("second transition at round %d: %+v", i, v)
			}
			upAt = i
			if v.loss != 0 {
				t.Errorf("loss after recovery %v, want the good run's 0", v.loss)
			}
		}
	}
	if upAt != 5 {
		t.Errorf("came back after %d good rounds, want 5 (as without max_loss)", upAt)
	}
}

func TestQuorum(t *testing.T) {
	cfg := defaults()
	cfg.Quorum = 2
	cfg.DownAfter = 1
	three := []result{ok[0], ok[1], {target: "203.0.113.3", err: errors.New("i/o timeout")}}
	s := newStepper(cfg)
	if v := s.step(three); !v.changed || !v.healthy {
		t.Fatalf("2 of 3 with quorum 2: %+v", v)
	}
	v := s.step(half)
	if !v.changed || v.healthy || v.reason != "1 round bad: 1 of 2 targets answered (quorum 2): 203.0.113.2 timeout" {
		t.Fatalf("1 of 2 with quorum 2: %+v", v)
	}
}

func TestMaxRTT(t *testing.T) {
	cfg := defaults()
	cfg.MaxRTT = 100 * time.Millisecond
	slow := []result{{target: "203.0.113.1", rtt: 150 * time.Millisecond}, {target: "203.0.113.2", rtt: 250 * time.Millisecond},
		{target: "203.0.113.3", rtt: 20 * time.Millisecond}}
	s := newStepper(cfg)
	s.step(ok)
	s.step(slow)
	v := s.step(slow)
	if !v.changed || v.healthy || v.reason != "2 rounds bad: median round trip 150ms over 100ms" {
		t.Fatalf("slow rounds: %+v", v)
	}
}

func TestShortErr(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{errors.New("dial tcp 203.0.113.1:443: i/o timeout"), "timeout"},
		{fmt.Errorf("icmp echo to 203.0.113.1: %w", errors.New("context deadline exceeded")), "timeout"},
		{errors.New("dial tcp 203.0.113.1:443: connect: network is unreachable"), "network unreachable"},
		{errors.New("dns query to 203.0.113.53:53: read udp 198.51.100.2:4000->203.0.113.53:53: recv: connection refused"), "connection refused"},
		{fmt.Errorf("wrapped: %w", &probeError{short: "unreachable (code 1) from 198.51.100.1", long: "x: y"}), "unreachable (code 1) from 198.51.100.1"},
		{errLate, "timeout"},
	} {
		if got := shortErr(c.err); got != c.want {
			t.Errorf("shortErr(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

// Timer jitter must not cost a whole extra round of hold-down: rounds that
// come a hair early still make 2 s after 4 intervals.
func TestHoldDownToleratesJitter(t *testing.T) {
	s := newStepper(defaults())
	s.step(lost)
	s.step(lost)
	s.cfg.Interval -= time.Microsecond
	for i := 1; i <= 10; i++ {
		if v := s.step(ok); v.changed {
			if i != 5 {
				t.Errorf("up after %d good rounds, want 5", i)
			}
			return
		}
	}
	t.Fatal("never came back")
}
