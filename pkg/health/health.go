// Package health probes each uplink through itself and decides, round by
// round, whether the ISP behind it forwards traffic.
//
// Every probe socket carries the uplink's fwmark (SO_MARK) and is bound to
// its interface (SO_BINDTODEVICE): policy routing sends it out of that
// uplink whatever the policies and the balancer say, and wanpin's nftables
// rules leave marked sockets alone. The mark is what makes it work: with
// SO_BINDTODEVICE alone the kernel finds no gateway and ARPs for the
// remote address.
//
// A round probes all targets at once, each bounded by the timeout, so a
// dead target costs one timeout per round, not one per target. Probes run
// in process (raw ICMP, TCP connect, HTTP GET, DNS over UDP); nothing is
// forked.
package health

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/inet"
)

// Spec is what the daemon hands a Monitor for one uplink.
type Spec struct {
	Uplink    string
	Interface string     // SO_BINDTODEVICE
	Mark      uint32     // SO_MARK: the uplink's fwmark; 0 sets none
	Source    netip.Addr // optional: bind probes of its family to this address (invalid: the kernel chooses)
	// Family is the one this monitor judges (see ForFamily); events carry it.
	Family inet.Family
	Config config.HealthConfig
}

// Event is a verdict: the first one after the first decisive round, then
// one per transition.
type Event struct {
	Uplink  string
	Family  inet.Family // the family judged
	Healthy bool
	Reason  string        // for people: "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout"
	RTT     time.Duration // median round trip of the deciding round's answers; 0: none answered
	Loss    float64       // fraction of probes lost over the window, 0..1
	At      time.Time
}

// Probe probes one target once. It returns when it has an answer or ctx
// ends (the monitor gives it the timeout as deadline); an error means the
// target did not answer, for the reason the error tells.
type Probe func(ctx context.Context) (rtt time.Duration, err error)

// Target is one probe destination of one uplink.
type Target struct {
	Name  string // as configured, for reasons and logs
	Probe Probe
}

// Monitor probes one uplink every interval until stopped.
//
// Until its first Event the daemon should go by link state alone: an
// uplink is usable from the start. The first Event comes after the first
// good round (healthy, no hold-down: the uplink was never taken out of
// service) or after down_after bad rounds in a row (unhealthy).
//
// What it holds is bounded: one goroutine, plus one per target during a
// round (none outlives it), at most one raw ICMP socket per address family
// with one reader goroutine each; TCP, HTTP and DNS probes open a socket
// per probe and close it before returning. Stop releases all of it.
type Monitor struct {
	spec   Spec
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	rtt  time.Duration
	loss float64
}

// Start begins probing spec's targets with spec's method. Sockets that
// cannot be opened (the interface does not exist yet, say) fail that
// round's probes and are tried again the next round. Verdicts are sent on
// events; a send gives up when the monitor stops, so a receiver that went
// away cannot wedge it. log may be nil.
func Start(ctx context.Context, spec Spec, events chan<- Event, log *slog.Logger) *Monitor {
	ps := newProbeSet(spec, nil)
	return start(ctx, spec, ps.targets(), ps, events, log)
}

// StartTargets is Start with probes of the caller's making instead of the
// ones spec.Config.Method describes (spec.Config.Targets is ignored).
func StartTargets(ctx context.Context, spec Spec, targets []Target, events chan<- Event, log *slog.Logger) *Monitor {
	return start(ctx, spec, targets, nil, events, log)
}

// Stop ends probing, closes the monitor's sockets and waits for its
// goroutines.
func (m *Monitor) Stop() {
	m.cancel()
	<-m.done
}

// Stats returns the latest round's median round trip (0: no answer) and
// the fraction of probes lost over the window (-1: no round yet).
func (m *Monitor) Stats() (rtt time.Duration, loss float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rtt, m.loss
}

func start(ctx context.Context, spec Spec, targets []Target, ps *probeSet, events chan<- Event, log *slog.Logger) *Monitor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	m := &Monitor{spec: spec, cancel: cancel, done: make(chan struct{}), loss: -1}
	go m.run(ctx, targets, ps, events, log)
	return m
}

func (m *Monitor) run(ctx context.Context, targets []Target, ps *probeSet, events chan<- Event, log *slog.Logger) {
	defer close(m.done)
	if ps != nil {
		defer ps.close()
	}
	cfg := m.spec.Config
	interval := cfg.Interval
	if interval <= 0 {
		interval = config.DefaultHealthInterval
	}
	j := newJudge(cfg)
	// A ticker keeps rounds at a fixed rate: a lost round (which lasts
	// the timeout) does not push the next one back, which is what bounds
	// the detection time (see config's defaults). The judge gets each
	// round's start (what the ticker sends), not the time its answers
	// came, so the round trip's jitter does not enter the hold-down.
	roundStart := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		results := m.probeRound(ctx, targets)
		if ctx.Err() != nil {
			return
		}
		v := j.round(results, roundStart)
		m.mu.Lock()
		m.rtt, m.loss = v.rtt, v.loss
		m.mu.Unlock()
		if v.answered == 0 && ps != nil {
			// Nothing answered: start over with fresh sockets next round.
			// A socket bound to a device holds its ifindex, and pppN gets
			// a new one every session.
			ps.reset()
		}
		if v.changed {
			log.Debug("health verdict", "uplink", m.spec.Uplink, "healthy", v.healthy, "reason", v.reason)
			ev := Event{Uplink: m.spec.Uplink, Family: m.spec.Family, Healthy: v.healthy, Reason: v.reason, RTT: v.rtt, Loss: v.loss, At: time.Now()}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case roundStart = <-tick.C:
		}
	}
}

// probeRound probes every target at once and waits for all of them (each
// is bounded by the timeout): one goroutine per target, none outlives the
// round.
func (m *Monitor) probeRound(ctx context.Context, targets []Target) []result {
	timeout := m.spec.Config.Timeout
	if timeout <= 0 {
		timeout = config.DefaultHealthTimeout
	}
	results := make([]result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			rtt, err := t.Probe(pctx)
			if err == nil && rtt > timeout {
				// An answer after the deadline is a lost probe.
				err = errLate
			}
			results[i] = result{target: t.Name, rtt: rtt, err: err}
		})
	}
	wg.Wait()
	return results
}
