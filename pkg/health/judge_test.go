package health

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

func defaults() config.HealthConfig {
	return config.HealthConfig{Interval: config.DefaultHealthInterval, Timeout: config.DefaultHealthTimeout,
		DownAfter: config.DefaultHealthDownAfter, UpAfter: config.DefaultHealthUpAfter, Quorum: 1,
		Window: config.DefaultHealthWindow, HoldDown: config.DefaultHealthHoldDown}
}

var (
	ok   = []Result{{Target: "203.0.113.1", RTT: 5 * time.Millisecond}, {Target: "203.0.113.2", RTT: 7 * time.Millisecond}}
	lost = []Result{{Target: "203.0.113.1", Err: errors.New("read ip4 0.0.0.0: i/o timeout")}, {Target: "203.0.113.2", Err: errors.New("i/o timeout")}}
)

func TestDownAfterAndReason(t *testing.T) {
	j := newJudge(defaults())
	now := time.Unix(0, 0)
	step := func(r []Result) (bool, bool, string) {
		now = now.Add(500 * time.Millisecond)
		return j.round(r, now)
	}
	step(ok)
	if ch, _, _ := step(lost); ch {
		t.Fatal("down after one lost round")
	}
	ch, h, reason := step(lost)
	if !ch || h || reason != "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout" {
		t.Fatalf("second lost round: changed=%v healthy=%v %q", ch, h, reason)
	}
	// Recovery: three good rounds and 2 s of hold-down.
	var upAt int
	for i := 1; i <= 10; i++ {
		if ch, h, reason := step(ok); ch {
			if !h || !strings.Contains(reason, "rounds good") {
				t.Fatalf("recovery: %v %q", h, reason)
			}
			upAt = i
			break
		}
	}
	// Good from round 1; 2 s of hold-down means round 5 (2.0 s later).
	if upAt != 5 {
		t.Errorf("came back after %d good rounds, want 5 (hold-down 2 s at 500 ms)", upAt)
	}
}

func TestEveryOtherRoundLostDoesNotFlap(t *testing.T) {
	j := newJudge(defaults())
	now := time.Unix(0, 0)
	for i := 0; i < 100; i++ {
		now = now.Add(500 * time.Millisecond)
		r := ok
		if i%2 == 1 {
			r = lost
		}
		if ch, _, reason := j.round(r, now); ch {
			t.Fatalf("round %d: transition %q", i, reason)
		}
	}
}

func TestHalfDeadLinkFailsOnLoss(t *testing.T) {
	cfg := defaults()
	cfg.MaxLoss = 30
	j := newJudge(cfg)
	now := time.Unix(0, 0)
	half := []Result{ok[0], lost[1]} // quorum 1 is met every round
	for i := 0; i < 10; i++ {
		now = now.Add(500 * time.Millisecond)
		if ch, h, reason := j.round(half, now); ch {
			if h || !strings.Contains(reason, "lost over") {
				t.Fatalf("%v %q", h, reason)
			}
			return
		}
	}
	t.Fatal("50% loss never took the uplink down")
}

func TestQuorum(t *testing.T) {
	cfg := defaults()
	cfg.Quorum = 2
	cfg.DownAfter = 1
	j := newJudge(cfg)
	if ch, h, _ := j.round([]Result{ok[0], lost[1]}, time.Unix(1, 0)); !ch || h {
		t.Error("one answer of two with quorum 2 counts as good")
	}
}
