package health

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wanpin/wanpin/internal/untrusted"
	"github.com/wanpin/wanpin/pkg/config"
)

// result is one probe's outcome.
type result struct {
	target string
	rtt    time.Duration
	err    error
}

// state is the verdict in force.
type state int

const (
	// pending: no verdict yet. The daemon goes by link state alone, so an
	// uplink is usable from the start and the first good round confirms it
	// without any hold-down (it was never taken out of service).
	pending state = iota
	healthy
	unhealthy
)

// verdict is what one round changed.
type verdict struct {
	changed  bool // a first verdict or a transition: send an Event
	healthy  bool
	reason   string
	rtt      time.Duration // median round trip of this round's answers; 0: none answered
	loss     float64       // fraction of probes lost over the window, 0..1
	answered int           // targets that answered this round
}

// judge turns rounds into verdicts. It is pure: the monitor feeds it
// results and each round's start time, tests feed it made-up rounds.
//
// Going down takes DownAfter bad rounds in a row, so a single lost round
// (or an ISP that loses every other round) never takes an uplink down.
// Consecutive counters alone would let a half-dead link hide behind its
// good rounds, so with MaxLoss set a round also counts as bad while the
// loss over the last Window rounds is too high; one good round cannot
// clear that, only Window rounds of better figures can.
//
// Coming back takes UpAfter good rounds in a row and HoldDown since the
// first of them. While down, MaxLoss is applied to each round's own loss
// rather than the window (which still holds the outage and would keep a
// recovered link down until it drained); the window then restarts from
// the good run, so the outage's losses do not take it straight back down.
type judge struct {
	cfg      config.HealthConfig
	state    state
	badRun   int
	goodRun  int
	goodFrom time.Time
	window   []float64 // fraction lost per round, newest last
}

func newJudge(cfg config.HealthConfig) *judge {
	if cfg.Window < 1 {
		cfg.Window = 1
	}
	if cfg.Quorum < 1 {
		cfg.Quorum = 1
	}
	return &judge{cfg: cfg}
}

func (j *judge) round(results []result, now time.Time) verdict {
	var rtts []time.Duration
	var failures []string
	for _, r := range results {
		if r.err == nil {
			rtts = append(rtts, r.rtt)
		} else {
			failures = append(failures, r.target+" "+shortErr(r.err))
		}
	}
	answered := len(rtts)
	roundLoss := 1.0
	if len(results) > 0 {
		roundLoss = float64(len(results)-answered) / float64(len(results))
	}
	j.window = append(j.window, roundLoss)
	if len(j.window) > j.cfg.Window {
		j.window = j.window[len(j.window)-j.cfg.Window:]
	}
	windowLoss := mean(j.window)
	var median time.Duration
	if answered > 0 {
		slices.Sort(rtts)
		median = rtts[answered/2]
		if answered%2 == 0 {
			median = (rtts[answered/2-1] + rtts[answered/2]) / 2
		}
	}
	v := verdict{healthy: j.state != unhealthy, rtt: median, loss: windowLoss, answered: answered}

	good, why := true, ""
	switch {
	case len(results) == 0:
		good, why = false, "no targets"
	case answered == 0:
		good, why = false, strings.Join(failures, ", ")
	case answered < j.cfg.Quorum:
		good, why = false, fmt.Sprintf("%d of %d targets answered (quorum %d): %s",
			answered, len(results), j.cfg.Quorum, strings.Join(failures, ", "))
	case j.cfg.MaxRTT > 0 && median > j.cfg.MaxRTT:
		good, why = false, fmt.Sprintf("median round trip %v over %v", median.Round(time.Millisecond), j.cfg.MaxRTT)
	case j.cfg.MaxLoss > 0 && j.state == unhealthy && roundLoss*100 > j.cfg.MaxLoss:
		good, why = false, fmt.Sprintf("%.0f%% of the round's probes lost (max_loss %v%%)", roundLoss*100, j.cfg.MaxLoss)
	case j.cfg.MaxLoss > 0 && j.state != unhealthy && len(j.window) >= j.cfg.Window && windowLoss*100 > j.cfg.MaxLoss:
		// Judged on a full window only: in a young one a single lost
		// probe would read as 50%.
		good, why = false, fmt.Sprintf("%.0f%% of probes lost over %d rounds (max_loss %v%%)", windowLoss*100, len(j.window), j.cfg.MaxLoss)
	}

	if good {
		j.badRun = 0
		if j.goodRun == 0 {
			j.goodFrom = now
		}
		j.goodRun++
		switch {
		case j.state == pending:
			j.state, v.changed, v.healthy = healthy, true, true
			v.reason = fmt.Sprintf("first round good: %d of %d targets answered, median %v",
				answered, len(results), median.Round(100*time.Microsecond))
		case j.state == unhealthy && j.goodRun >= j.cfg.UpAfter && j.held(now):
			j.state, v.changed, v.healthy = healthy, true, true
			v.reason = fmt.Sprintf("%d rounds good", j.goodRun)
			if j.cfg.HoldDown > 0 {
				v.reason += fmt.Sprintf(", held down %v", j.cfg.HoldDown)
			}
			// The outage's rounds leave the window; the good run stays.
			j.window = slices.Clone(j.window[max(0, len(j.window)-j.goodRun):])
			v.loss = mean(j.window)
		}
		return v
	}
	j.goodRun = 0
	j.badRun++
	if j.state != unhealthy && j.badRun >= j.cfg.DownAfter {
		j.state, v.changed, v.healthy = unhealthy, true, false
		lost := "lost"
		if answered > 0 {
			lost = "bad"
		}
		// Bounded: one failure per target, and targets are as many as
		// the config lists.
		v.reason = untrusted.Text(fmt.Sprintf("%d round%s %s: %s", j.badRun, plural(j.badRun), lost, why), maxReason)
	}
	return v
}

// held tells whether the good run has lasted the hold-down. Rounds start
// a whole number of intervals apart, give or take the timer's jitter; the
// elapsed time is rounded to whole intervals so that jitter cannot make a
// 2 s hold-down at 500 ms take a fifth round now and then.
func (j *judge) held(now time.Time) bool {
	elapsed := now.Sub(j.goodFrom)
	if iv := j.cfg.Interval; iv > 0 {
		elapsed = elapsed.Round(iv)
	}
	return elapsed >= j.cfg.HoldDown
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Reasons go to logs, status, D-Bus and hooks; a probe error can carry
// bytes a probe target chose (a caller's own probes, a future error text),
// so its short form and the whole reason are printable ASCII of bounded
// length.
const (
	maxShort  = 128  // one target's failure
	maxReason = 1024 // a verdict's reason
)

// shortErr keeps what a person needs from a probe error: "timeout"
// rather than "dial tcp 203.0.113.1:443: i/o timeout".
func shortErr(err error) string {
	if pe := (*probeError)(nil); errors.As(err, &pe) {
		return untrusted.Text(pe.short, maxShort)
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "timeout"), strings.Contains(s, "deadline exceeded"):
		return "timeout"
	case strings.Contains(s, "network is unreachable"):
		return "network unreachable"
	case strings.Contains(s, "no route to host"):
		return "no route to host"
	}
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return untrusted.Text(s, maxShort)
}
