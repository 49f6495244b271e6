package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/pkg/core"
)

// adaptiveConfig: two auto uplinks with a bandwidth of 100 Mbit/s each
// (their start and cap, above what the lab's ISPs deliver), probed by
// ICMP to both server addresses (a reply the shaper drops fails no
// round: quorum 1 of 2).
const adaptiveConfig = `
[[uplink]]
name = "isp1"
interface = "wan1"
weight = "auto"
bandwidth = "100Mbit"

[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]

[[uplink]]
name = "isp2"
interface = "wan2"
weight = "auto"
bandwidth = "100Mbit"

[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]
`

// load keeps workers downloads of size bytes going from the LAN host,
// each a new connection, until stop is called; it counts them and their
// errors.
type load struct {
	done, errs atomic.Int64
	lastErr    atomic.Value
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func startLoad(l *netlab.Lab, workers int, size int64) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel}
	for range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for ctx.Err() == nil {
				if _, err := l.Fetch(size, 20*time.Second); err != nil {
					ld.errs.Add(1)
					ld.lastErr.Store(err.Error())
					continue
				}
				ld.done.Add(1)
			}
		}()
	}
	return ld
}

func (ld *load) stop() {
	ld.cancel()
	ld.wg.Wait()
}

// weightsOf reads the weights in force from status --json.
func weightsOf(t *testing.T, d *daemon) (w1, w2 int, st core.Status) {
	t.Helper()
	st = statusOf(t, d)
	for _, u := range st.Uplinks {
		switch u.Name {
		case "isp1":
			w1 = u.Weight
		case "isp2":
			w2 = u.Weight
		}
	}
	return w1, w2, st
}

func estimates(st core.Status) string {
	var parts []string
	for _, u := range st.Uplinks {
		parts = append(parts, fmt.Sprintf("%s weight %d estimate %.1f Mbit/s rate %.1f Mbit/s rtt %.1fms (%s)", u.Name, u.Weight,
			u.Capacity/1e6, u.Rate/1e6, u.RTTms, u.Evidence))
	}
	return strings.Join(parts, "; ")
}

// newShare counts where the next n new connections of the load go, by
// the source address the server sees, and returns isp1's share.
func newShare(t *testing.T, l *netlab.Lab, n int) (float64, map[int]int) {
	t.Helper()
	l.ResetSeen()
	var by map[int]int
	waitUntil(t, 30*time.Second, fmt.Sprintf("%d new connections", n), func() (bool, string) {
		by = map[int]int{}
		total := 0
		for addr, c := range l.Seen() {
			by[l.ISPOf(addr)] += c
			total += c
		}
		return total >= n, fmt.Sprint(by)
	})
	return float64(by[1]) / float64(by[1]+by[2]), by
}

// TestAdaptiveWeights: the ISPs shape the router's downloads with tbf to
// 80 and 20 Mbit/s, both uplinks weight = "auto" from an equal start.
// Under a load of parallel downloads (each a new connection) the
// weights move toward 4:1 within 30 s, and so do the shares of new
// connections the server sees; then ISP 1 is cut to 10 Mbit/s, and
// within 30 s the weights turn round (ISP 2 the larger) and the new
// connections follow. Status (text, JSON) and metrics show the weights
// and estimates, the log says why they changed, and nothing was flushed.
func TestAdaptiveWeights(t *testing.T) {
	l := newLab(t, 2)
	for i, rate := range []string{"80mbit", "20mbit"} {
		if err := l.Shape(i+1, rate); err != nil {
			t.Fatal(err)
		}
	}
	d := startWanpin(t, l, adaptiveConfig, "--metrics-listen", "127.0.0.1:9469")
	if w1, w2, _ := weightsOf(t, d); w1 != 100 || w2 != 100 {
		t.Fatalf("start: weights %d:%d, want 100:100 (equal bandwidths)", w1, w2)
	}
	// An idle window with the probes' round trips: the baseline their
	// rise under load is measured from.
	waitUntil(t, 10*time.Second, "an idle window with round trips", func() (bool, string) {
		st := statusOf(t, d)
		ok := true
		for _, u := range st.Uplinks {
			ok = ok && u.Evidence == "idle" && u.RTTms > 0
		}
		return ok, estimates(st)
	})

	ld := startLoad(l, 16, 256<<10)
	defer ld.stop()
	start := time.Now()
	var w1, w2 int
	var st core.Status
	took := waitUntil(t, 30*time.Second, "weights toward 4:1 under load", func() (bool, string) {
		w1, w2, st = weightsOf(t, d)
		return w2 > 0 && float64(w1)/float64(w2) >= 3, estimates(st)
	})
	t.Logf("80/20 Mbit/s: weights %d:%d after %v: %s", w1, w2, took.Round(100*time.Millisecond), estimates(st))
	share, by := newShare(t, l, 300)
	t.Logf("new connections at %d:%d: %v, isp1 %.0f%%", w1, w2, by, 100*share)
	if share < 0.7 || share > 0.9 {
		t.Errorf("isp1 took %.0f%% of the new connections (%v) at weights %d:%d, want about 80%%", 100*share, by, w1, w2)
	}
	d.waitFor(`msg="uplink weights changed"`, 1, time.Second)
	if !strings.Contains(d.log(), `reason="isp2 100->`) || !strings.Contains(d.log(), "estimates: isp1 ") {
		t.Errorf("no reason for isp2's weight in the log:\n%s", grepLines(d.log(), "weights changed"))
	}
	out, _ := d.cli(0, "status")
	if !regexp.MustCompile(`weight auto: \d+, estimate [0-9.]+ Mbit/s, bandwidth 100 Mbit/s; last window`).MatchString(out) {
		t.Errorf("status text:\n%s", out)
	}
	metrics := run(t, l, l.Router, "curl", "-sS", "-m", "5", "http://127.0.0.1:9469/metrics")
	if m := metric(t, metrics, `wanpin_uplink_weight{interface="wan1",uplink="isp1"}`); m < float64(w1)*0.8 {
		t.Errorf("wanpin_uplink_weight of isp1: %v, status said %d", m, w1)
	}
	if m := metric(t, metrics, `wanpin_uplink_capacity_estimate_bits_per_second{interface="wan2",uplink="isp2"}`); m < 10e6 || m > 45e6 {
		t.Errorf("isp2's capacity estimate %.1f Mbit/s, want about 20", m/1e6)
	}

	// ISP 1 cuts its rate: within 30 s the weights turn round.
	if err := l.Shape(1, "10mbit"); err != nil {
		t.Fatal(err)
	}
	took = waitUntil(t, 30*time.Second, "the weights following ISP 1 down to 10 Mbit/s", func() (bool, string) {
		w1, w2, st = weightsOf(t, d)
		return w2 > w1, estimates(st)
	})
	t.Logf("10/20 Mbit/s: weights %d:%d after %v: %s", w1, w2, took.Round(100*time.Millisecond), estimates(st))
	share, by = newShare(t, l, 200)
	t.Logf("new connections at %d:%d: %v, isp1 %.0f%%", w1, w2, by, 100*share)
	if share > 0.5 {
		t.Errorf("isp1 took %.0f%% of the new connections (%v) at weights %d:%d, want less than half", 100*share, by, w1, w2)
	}
	ld.stop()
	t.Logf("the weights' changes:\n%s", grepLines(d.log(), "weights changed"))
	t.Logf("%d downloads in %v, %d failed (last: %v)", ld.done.Load(), time.Since(start).Round(time.Second), ld.errs.Load(), ld.lastErr.Load())
	// Weights move shares only: nothing was flushed or moved.
	for _, u := range statusOf(t, d).Uplinks {
		if u.Flushed != 0 || u.FailbackMoved != 0 || u.Transitions != 0 {
			t.Errorf("%s: %d flushed, %d moved, %d transitions; want none", u.Name, u.Flushed, u.FailbackMoved, u.Transitions)
		}
	}
}
