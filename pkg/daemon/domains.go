package daemon

import (
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/dnslearn"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/rules"
)

// learnedWriter is the NFTables that takes learned addresses (the real
// one, rules.Manager).
type learnedWriter interface {
	AddLearned([]rules.Learned) error
	KeepDNSAlive(alive bool) error
	LearnedEntries([]rules.DomainSet) (map[string][]rules.LearnedEntry, error)
	// AppliedDomainSets: the learned sets of the table just applied.
	AppliedDomainSets() []rules.DomainSet
}

// domainTarget is a learned set an answer's address goes to.
type domainTarget struct {
	set    string
	family inet.Family
}

// domainRoutes maps each configured domain to the learned sets of every
// policy that names it (a domain in two policies fills both: the first
// that matches steers, as for any key).
type domainRoutes struct {
	by    map[string][]domainTarget
	sets  []rules.DomainSet
	floor time.Duration
}

// targets are the sets an address learned for domain goes to: those of
// the domains it is or is under, however specific (a policy for
// example.com learns www.example.com even when another names
// www.example.com itself and the Matcher reports that one).
func (r *domainRoutes) targets(name string) []domainTarget {
	var out []domainTarget
	for n := name; n != ""; {
		out = append(out, r.by[n]...)
		i := strings.IndexByte(n, '.')
		if i < 0 {
			break
		}
		n = n[i+1:]
	}
	return out
}

// domainLearner runs the DNS learner while some policy has domains: the
// Listener's handler adds what each held answer teaches to the sets
// before the answer goes on, and a ticker keeps the hold rules alive
// while the Listener runs.
type domainLearner struct {
	log *slog.Logger
	nft learnedWriter

	routes atomic.Pointer[domainRoutes]

	mu    sync.Mutex // guards ln and group; taken by sync, close and the ticker, never by the handler
	ln    *dnslearn.Listener
	group uint16
	mark  uint32
	stop  chan struct{}

	added, addErrors atomic.Uint64
	lastErrLog       atomic.Int64 // unix nanoseconds of the last add error logged
}

func newDomainLearner(nft learnedWriter, log *slog.Logger) *domainLearner {
	return &domainLearner{nft: nft, log: log}
}

// sync follows an applied table: it starts, re-targets or stops the
// Listener. Called on the loop after each successful apply.
func (l *domainLearner) sync(nft desired.NFT, cfg *config.Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if nft.DNSHold.Group == 0 {
		l.stopLocked("no policy has domains")
		l.routes.Store(nil)
		return
	}
	r := &domainRoutes{by: map[string][]domainTarget{}, sets: l.nft.AppliedDomainSets(), floor: cfg.DomainTTLFloor}
	var all []string
	for _, s := range r.sets {
		for _, d := range s.Domains {
			if _, seen := r.by[d]; !seen {
				all = append(all, d)
			}
			r.by[d] = append(r.by[d], domainTarget{set: s.Name, family: s.Family})
		}
	}
	m, err := dnslearn.NewMatcher(all)
	if err != nil {
		// The configuration validated every domain already.
		l.log.Error("domain policies: matcher", "err", err)
		return
	}
	l.routes.Store(r)
	if l.ln != nil && l.group == nft.DNSHold.Group && l.mark == nft.DNSHold.Mark {
		select {
		case <-l.ln.Done():
			l.stopLocked("the learner had stopped")
		default:
			l.ln.SetMatcher(m)
			return
		}
	}
	l.stopLocked("its NFLOG group or mark changed")
	ln, err := dnslearn.Listen(dnslearn.Options{Group: nft.DNSHold.Group, Mark: nft.DNSHold.Mark, Matcher: m, Handle: l.handle, Logger: l.log})
	if err != nil {
		// Fail open: dns_alive stays empty, the hold rules match nothing
		// and answers pass unlearned.
		l.log.Error("domain policies: not learning from DNS answers", "nflog_group", nft.DNSHold.Group, "err", err)
		return
	}
	l.ln, l.group, l.mark, l.stop = ln, nft.DNSHold.Group, nft.DNSHold.Mark, make(chan struct{})
	l.keepAlive()
	go l.tick(ln, l.stop)
	l.log.Info("domain policies: learning from DNS answers", "nflog_group", l.group, "domains", m.Len(), "sets", len(r.sets))
}

// keepAlive refreshes dns_alive; with mu held.
func (l *domainLearner) keepAlive() {
	if err := l.nft.KeepDNSAlive(true); err != nil {
		l.log.Warn("domain policies: refreshing the hold rules", "err", err)
	}
}

// tick refreshes dns_alive while ln runs; when ln dies it clears it, so
// answers pass at once instead of waiting for the timeout.
func (l *domainLearner) tick(ln *dnslearn.Listener, stop chan struct{}) {
	t := time.NewTicker(rules.DNSAliveTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ln.Done():
			l.mu.Lock()
			if l.ln == ln {
				l.log.Error("domain policies: the DNS learner stopped; answers pass unlearned until the next apply", "err", ln.Err())
				l.stopLocked("")
			}
			l.mu.Unlock()
			return
		case <-t.C:
			l.mu.Lock()
			if l.ln == ln {
				l.keepAlive()
			}
			l.mu.Unlock()
		}
	}
}

// stopLocked stops the Listener, if any; with mu held. The hold rules
// stop holding first.
func (l *domainLearner) stopLocked(why string) {
	if l.ln == nil {
		return
	}
	if err := l.nft.KeepDNSAlive(false); err != nil {
		l.log.Debug("domain policies: clearing dns_alive", "err", err)
	}
	close(l.stop)
	if err := l.ln.Close(); err != nil {
		l.log.Warn("domain policies: closing the learner", "err", err)
	}
	if why != "" {
		l.log.Info("domain policies: stopped learning", "reason", why)
	}
	l.ln = nil
}

func (l *domainLearner) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopLocked("stopping")
}

// handle is the Listener's handler: the answer waits for it.
func (l *domainLearner) handle(ls []dnslearn.Learned) {
	r := l.routes.Load()
	if r == nil {
		return
	}
	var batch []rules.Learned
	// An address comes once per domain on its CNAME chain, and a set
	// can be the target of two of them (example.com's for a chain
	// through www.example.com and cdn.example.com): once per set.
	type setAddr struct {
		set  string
		addr netip.Addr
	}
	queued := map[setAddr]int{}
	for _, x := range ls {
		fam := inet.Of(x.Addr)
		ttl := min(max(x.TTL, r.floor), config.MaxDomainTTL)
		// x.Domain, not x.Name: a name of another domain whose CNAME
		// chain leads into this one (tv.example.net -> edge.example.com)
		// teaches example.com's policies.
		for _, t := range r.targets(x.Domain) {
			if t.family != fam {
				continue
			}
			if i, dup := queued[setAddr{t.set, x.Addr}]; dup {
				batch[i].Timeout = min(batch[i].Timeout, ttl)
				continue
			}
			queued[setAddr{t.set, x.Addr}] = len(batch)
			batch = append(batch, rules.Learned{Set: t.set, Addr: x.Addr, Name: x.Name, Timeout: ttl})
		}
	}
	if len(batch) == 0 {
		return
	}
	if err := l.nft.AddLearned(batch); err != nil {
		l.addErrors.Add(uint64(len(batch)))
		// At most one line a minute: a full set fails every answer.
		now := time.Now().UnixNano()
		if last := l.lastErrLog.Load(); now-last > int64(time.Minute) && l.lastErrLog.CompareAndSwap(last, now) {
			l.log.Warn("domain policies: learned addresses not added", "addresses", len(batch), "err", err)
		}
		return
	}
	l.added.Add(uint64(len(batch)))
}

// report is the learner's figures for status.
func (l *domainLearner) report() *core.DomainsReport {
	l.mu.Lock()
	ln := l.ln
	l.mu.Unlock()
	if l.routes.Load() == nil {
		return nil
	}
	rep := &core.DomainsReport{Learning: ln != nil, Added: l.added.Load(), AddErrors: l.addErrors.Load()}
	if ln != nil {
		s := ln.Stats()
		rep.Held, rep.Reinjected, rep.ReinjectErrors, rep.ParseErrors, rep.Overruns = s.Held, s.Reinjected, s.ReinjectErrors, s.ParseErrors, s.Overruns
	}
	return rep
}

// learnedView is the learned sets' content as last read, for explain,
// read again at most once a StickyInterval (explain is open to anyone).
type learnedView struct {
	read func([]rules.DomainSet) (map[string][]rules.LearnedEntry, error)

	mu      sync.Mutex
	entries map[string][]rules.LearnedEntry
	at      time.Time
}

func (v *learnedView) snapshot(sets []rules.DomainSet) (map[string][]rules.LearnedEntry, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.at) > StickyInterval {
		if e, err := v.read(sets); err == nil {
			v.entries, v.at = e, time.Now()
		}
	}
	return v.entries, v.at
}

// learnedHit finds addr in set.
func learnedHit(entries map[string][]rules.LearnedEntry, at time.Time, set string, addr netip.Addr) (rules.LearnedEntry, bool) {
	for _, e := range entries[set] {
		if e.Addr == addr {
			if e.Left -= time.Since(at); e.Left > 0 {
				return e, true
			}
		}
	}
	return rules.LearnedEntry{}, false
}
