// Package health probes each uplink through itself (its socket carries the
// uplink's mark and is bound to its interface, so policies and balancing
// never move a probe) and decides, round by round, whether the ISP behind
// it forwards traffic. All targets of a round are probed in parallel.
package health

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

// Result is one probe's outcome.
type Result struct {
	Target string
	RTT    time.Duration
	Err    error
}

// judge turns rounds into transitions. It is pure: the monitor feeds it
// results and the time; tests feed it made-up rounds.
type judge struct {
	cfg      config.HealthConfig
	healthy  bool // the verdict in force (true until proven otherwise)
	decided  bool // a verdict was emitted at least once
	badRun   int
	goodRun  int
	goodFrom time.Time
	window   []float64 // loss fraction per round, newest last
	lastRTT  time.Duration
	lastLoss float64
}

func newJudge(cfg config.HealthConfig) *judge {
	return &judge{cfg: cfg, healthy: true}
}

// round takes one round's results and returns whether the verdict
// changed, the verdict and the reason.
func (j *judge) round(results []Result, now time.Time) (changed, healthy bool, reason string) {
	answered := 0
	var rtts []time.Duration
	var failures []string
	for _, r := range results {
		if r.Err == nil {
			answered++
			rtts = append(rtts, r.RTT)
		} else {
			failures = append(failures, r.Target+" "+shortErr(r.Err))
		}
	}
	loss := 0.0
	if len(results) > 0 {
		loss = float64(len(results)-answered) / float64(len(results))
	}
	j.window = append(j.window, loss)
	if len(j.window) > j.cfg.Window {
		j.window = j.window[len(j.window)-j.cfg.Window:]
	}
	windowLoss := 0.0
	for _, l := range j.window {
		windowLoss += l
	}
	windowLoss /= float64(len(j.window))
	j.lastLoss = windowLoss
	var median time.Duration
	if len(rtts) > 0 {
		sort.Slice(rtts, func(a, b int) bool { return rtts[a] < rtts[b] })
		median = rtts[len(rtts)/2]
		j.lastRTT = median
	}

	good := answered >= j.cfg.Quorum
	why := ""
	switch {
	case !good:
		why = strings.Join(failures, ", ")
	case j.cfg.MaxRTT > 0 && median > j.cfg.MaxRTT:
		good, why = false, fmt.Sprintf("median round trip %v over %v", median.Round(time.Millisecond), j.cfg.MaxRTT)
	case j.cfg.MaxLoss > 0 && windowLoss*100 > j.cfg.MaxLoss:
		// A half-dead link: enough answers for the quorum, too many
		// lost over the window. One good round must not hide it.
		good, why = false, fmt.Sprintf("%.0f%% lost over %d rounds", windowLoss*100, len(j.window))
	}

	if good {
		j.badRun = 0
		if j.goodRun == 0 {
			j.goodFrom = now
		}
		j.goodRun++
		if !j.healthy && j.goodRun >= j.cfg.UpAfter && now.Sub(j.goodFrom) >= j.cfg.HoldDown {
			j.healthy, j.decided = true, true
			return true, true, fmt.Sprintf("%d rounds good, healthy for %v", j.goodRun, now.Sub(j.goodFrom).Round(time.Millisecond))
		}
		return false, j.healthy, ""
	}
	j.goodRun = 0
	j.badRun++
	if j.healthy && j.badRun >= j.cfg.DownAfter {
		j.healthy, j.decided = false, true
		return true, false, fmt.Sprintf("%d rounds lost: %s", j.badRun, why)
	}
	return false, j.healthy, ""
}

// shortErr keeps what a person needs from a probe error.
func shortErr(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "timeout"), strings.Contains(s, "deadline"):
		return "timeout"
	case strings.Contains(s, "unreachable"):
		return "unreachable"
	}
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
