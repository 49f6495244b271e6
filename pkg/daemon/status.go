package daemon

import (
	"errors"
	"log/slog"
	"maps"
	"reflect"
	"sync"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/health"
)

// PinnedInterval bounds how often the pinned-connection counts are taken:
// counting dumps the whole conntrack table, which costs the kernel about
// 0.24 s of CPU at 200,000 entries (BenchmarkCountByMark200k). Readers
// (status, metrics) get the latest count; when it is older than this, a
// new one is taken off the loop, and a reader waits for it at most
// PinnedWait, and not at all when the last count took longer than that
// (it would wait in vain).
const (
	PinnedInterval = 5 * time.Second
	PinnedWait     = 150 * time.Millisecond
)

// publisher holds the status for readers off the loop: the machine's part
// and the executor's figures as of the loop's last step, the probes'
// latest round trips, and pinned-connection counts taken by a goroutine
// of its own. No reader ever waits for the loop; none makes the kernel
// count more often than the counter's own pace.
type publisher struct {
	log *slog.Logger
	// count counts pinned connections (nil: no counts); closeCount
	// releases what it holds.
	count      func(mask uint32) (map[uint32]int, error)
	closeCount func() error

	mu        sync.Mutex
	status    core.Status
	mask      uint32
	monitors  map[core.Key]*health.Monitor
	desired   desired.State   // as last built, for explain
	explainer *core.Explainer // compiled from desired when first asked
	// explainerGen counts the changes of desired; compiling serializes
	// the compiling of explainers.
	explainerGen uint64
	compiling    sync.Mutex
	pinned       map[uint32]int
	pinnedAt     time.Time
	lastTook     time.Duration // how long the last count took
	// next is closed when the count under way (or the next one) is done;
	// kick asks for it.
	next      chan struct{}
	kick      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	// sticky reads the sticky sets (nil: not readable, as in tests).
	sticky *stickyView
	// domains: the DNS learner, for its figures (nil: none).
	domains *domainLearner
}

// newPublisher starts the pinned-connection counter when counter is set
// (nil: no counts). It counts with a ctCounter of its own (pincount.go),
// in the daemon's namespace, which counter's connection also reaches; it
// reads each entry's mark and nothing else. counter.CountByMark, kept for
// when that socket cannot be opened, decodes every entry into a Flow: at
// 200,000 entries 1.1 s of CPU and 487 MB allocated per count (the
// daemon's resident memory went from 15 MB to 300 MB), against 0.25 s and
// 0.2 MB.
func newPublisher(counter Flusher, log *slog.Logger) *publisher {
	p := &publisher{log: log, next: make(chan struct{}), kick: make(chan struct{}, 1),
		done: make(chan struct{})}
	if counter == nil {
		return p
	}
	p.count, p.closeCount = counter.CountByMark, counter.Close
	if c, err := newCTCounter(); err != nil {
		log.Warn("counting pinned connections the costly way", "err", err)
	} else {
		p.count = c.CountByMark
		p.closeCount = func() error { return errors.Join(c.Close(), counter.Close()) }
	}
	go p.countLoop()
	return p
}

func (p *publisher) close() {
	p.closeOnce.Do(func() {
		close(p.done)
		if p.closeCount != nil {
			p.closeCount()
		}
	})
}

// countLoop counts pinned connections when asked, leaving at least
// PinnedInterval, and four times the last count's duration, between two
// counts: at most a fifth of a core however big the table and however
// many readers.
func (p *publisher) countLoop() {
	for {
		select {
		case <-p.done:
			return
		case <-p.kick:
		}
		p.mu.Lock()
		mask := p.mask
		p.mu.Unlock()
		start := time.Now()
		counts, err := p.count(mask)
		took := time.Since(start)
		if err != nil {
			p.log.Warn("counting pinned connections", "err", err)
		}
		p.mu.Lock()
		p.pinned, p.pinnedAt, p.lastTook = counts, time.Now(), took
		close(p.next)
		p.next = make(chan struct{})
		p.mu.Unlock()
		select {
		case <-p.done:
			return
		case <-time.After(max(PinnedInterval, 4*took)):
		}
	}
}

func (p *publisher) setMonitors(m map[core.Key]*health.Monitor) {
	p.mu.Lock()
	p.monitors = maps.Clone(m)
	p.mu.Unlock()
}

// set is called by the loop alone, after each step and each refresh of
// the traffic counters.
func (p *publisher) set(s core.Status, mask uint32, d desired.State) {
	// The explainer stays while the state is the same: between steps the
	// loop publishes the very value it holds, so the counters' refresh
	// every second does not make the next Explain compile every policy
	// again. A step builds its state anew: the next Explain compiles. (An
	// equal state built anew is taken as new: comparing 10,000 policies
	// with reflect.DeepEqual took 17 ms, on the loop, as much as building
	// them; BenchmarkPublish10k.) p.desired is written by the loop only:
	// it may read it unlocked.
	same := sameValue(reflect.ValueOf(p.desired), reflect.ValueOf(d))
	p.mu.Lock()
	p.status, p.mask, p.desired = s, mask, d
	if !same {
		p.explainer = nil
		p.explainerGen++
	}
	p.mu.Unlock()
}

// explain is what Explain evaluates a flow with: the published state,
// its policies compiled once (on the first Explain after a change), so
// that what a call costs is one flow's evaluation whatever the number of
// policies, and anyone may call it. The compiling (60 ms at 10,000
// policies) is done outside p.mu, which the loop takes to publish, and
// one at a time: callers that come meanwhile wait for it.
func (p *publisher) explain() *core.Explainer {
	p.mu.Lock()
	x := p.explainer
	p.mu.Unlock()
	if x != nil {
		return x
	}
	p.compiling.Lock()
	defer p.compiling.Unlock()
	p.mu.Lock()
	x, d, gen := p.explainer, p.desired, p.explainerGen
	p.mu.Unlock()
	if x != nil {
		return x // compiled by the caller before
	}
	x = core.NewExplainer(d)
	p.mu.Lock()
	if p.explainerGen == gen {
		p.explainer = x
	}
	p.mu.Unlock()
	return x
}

// sameValue reports whether a and b (of one type) are the same value: the
// same scalars, and slices and maps that share their backing arrays. It
// looks at fields, not at elements: O(1) in the number of policies. A
// false "different" costs a compile; it never says "same" of values
// that differ, unless one's elements were changed in place, which no
// desired state is once built.
func sameValue(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if !sameValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Array:
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Map:
		return a.Len() == b.Len() && (a.Len() == 0 || a.Pointer() == b.Pointer())
	case reflect.Pointer, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		return a.Pointer() == b.Pointer()
	case reflect.Interface:
		return a.IsNil() && b.IsNil() || !a.IsNil() && !b.IsNil() && a.Elem().Type() == b.Elem().Type() && sameValue(a.Elem(), b.Elem())
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return a.Uint() == b.Uint()
	case reflect.Float32, reflect.Float64:
		return a.Float() == b.Float()
	case reflect.Complex64, reflect.Complex128:
		return a.Complex() == b.Complex()
	case reflect.String:
		return a.String() == b.String()
	}
	return false
}

// get is the status now: what the loop published, with the probes'
// latest figures and the latest pinned counts (asking for fresh ones,
// which arrive later). What it costs is copying the status: however many
// readers, the kernel counts at the counter's pace.
func (p *publisher) get() core.Status {
	p.mu.Lock()
	if p.count != nil && time.Since(p.pinnedAt) > PinnedInterval {
		select {
		case p.kick <- struct{}{}:
		default:
		}
		if p.lastTook < PinnedWait {
			next := p.next
			p.mu.Unlock()
			t := time.NewTimer(PinnedWait)
			select {
			case <-next:
			case <-t.C:
			}
			t.Stop()
			p.mu.Lock()
		}
	}
	defer p.mu.Unlock()
	s := p.status
	if p.domains != nil {
		s.Domains = p.domains.report()
	}
	s.Uplinks = append([]core.UplinkReport(nil), s.Uplinks...)
	for i := range s.Uplinks {
		u := &s.Uplinks[i]
		for k, m := range p.monitors {
			if k.Uplink == u.Name {
				rtt, loss := m.Stats()
				u.SetProbeFigures(k.Family, rtt, loss)
			}
		}
		u.Pinned = p.pinned[uint32(u.Mark)]
	}
	if !p.pinnedAt.IsZero() {
		s.PinnedAge = core.Seconds(time.Since(p.pinnedAt).Seconds())
	}
	if v, nft, gen := p.sticky, p.desired.NFT, p.explainerGen; v != nil {
		p.mu.Unlock()
		counts, list, total := stickyReports(v.snapshot(nft, gen))
		p.mu.Lock()
		for i := range s.Uplinks {
			s.Uplinks[i].Sticky = counts[s.Uplinks[i].Name]
		}
		s.Sticky, s.StickyTotal = list, total
	}
	return s
}

// stickyLookup is the sticky balancers' memory for explain (nil: none).
func (p *publisher) stickyLookup() core.StickyLookup {
	p.mu.Lock()
	v, nft, gen := p.sticky, p.desired.NFT, p.explainerGen
	p.mu.Unlock()
	if v == nil {
		return nil
	}
	return stickyLookup(v.snapshot(nft, gen))
}

// publish hands the readers the state after a step.
func (d *Daemon) publish() {
	s := d.state.Report()
	for i := range s.Uplinks {
		u := &s.Uplinks[i]
		u.Flushed = d.flushed[u.Name]
		u.FailbackMoved = d.failedBack[u.Name]
		u.Traffic = d.traffic[u.Name]
		if e, ok := d.estimates[u.Name]; ok && u.WeightAuto {
			u.Capacity, u.Rate, u.Evidence = e.Capacity, e.Rate, e.Evidence
		}
	}
	s.Applies, s.ApplyErrors = d.applies, d.applyErrors
	d.mptcpReport(&s)
	d.pub.set(s, d.state.Config.MarkMask, d.state.Desired)
}
