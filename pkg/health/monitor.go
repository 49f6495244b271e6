package health

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

// Spec is what the daemon hands a monitor for one uplink.
type Spec struct {
	Uplink    string
	Interface string // SO_BINDTODEVICE
	Mark      uint32 // SO_MARK: the uplink's fwmark
	Config    config.HealthConfig
}

// Event is a verdict change.
type Event struct {
	Uplink  string
	Healthy bool
	Reason  string
	At      time.Time
}

// Monitor probes one uplink every interval until stopped.
type Monitor struct {
	spec   Spec
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	rtt  time.Duration
	loss float64
}

// Start begins probing. Verdict changes are sent on events; the send
// gives up when the monitor is stopped, so a busy receiver cannot wedge it.
func Start(ctx context.Context, spec Spec, events chan<- Event, log *slog.Logger) *Monitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &Monitor{spec: spec, cancel: cancel, done: make(chan struct{}), loss: -1}
	go m.run(ctx, events, log)
	return m
}

// Stop ends probing and waits for it.
func (m *Monitor) Stop() {
	m.cancel()
	<-m.done
}

// Stats returns the latest median round trip (0: no answer yet) and the
// loss over the window (-1: no round yet).
func (m *Monitor) Stats() (time.Duration, float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rtt, m.loss
}

func (m *Monitor) run(ctx context.Context, events chan<- Event, log *slog.Logger) {
	defer close(m.done)
	cfg := m.spec.Config
	probe := newProber(cfg.Method, m.spec.Interface, m.spec.Mark, cfg.DNSName)
	j := newJudge(cfg)
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for {
		results := m.roundOnce(ctx, probe)
		if ctx.Err() != nil {
			return
		}
		changed, healthy, reason := j.round(results, time.Now())
		m.mu.Lock()
		m.rtt, m.loss = j.lastRTT, j.lastLoss
		m.mu.Unlock()
		if changed {
			log.Debug("health verdict", "uplink", m.spec.Uplink, "healthy", healthy, "reason", reason)
			select {
			case events <- Event{Uplink: m.spec.Uplink, Healthy: healthy, Reason: reason, At: time.Now()}:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// roundOnce probes every target at once and waits for all of them (each
// is bounded by the timeout).
func (m *Monitor) roundOnce(ctx context.Context, probe prober) []Result {
	targets := m.spec.Config.Targets
	results := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, m.spec.Config.Timeout)
			defer cancel()
			rtt, err := probe(pctx, target)
			results[i] = Result{Target: target, RTT: rtt, Err: err}
		}()
	}
	wg.Wait()
	return results
}
