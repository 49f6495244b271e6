// Package daemon is wanpin's executor: it feeds pkg/core's step function
// the inputs it gathers from the kernel (interface snapshots, health
// verdicts, D-Bus requests, signals, timers) and carries out the effects
// it returns, in order, against the kernel (nftables, routing, conntrack,
// sysctls, hooks, systemd). One goroutine, the loop in Run, owns the
// state and every change; everything else sends it requests.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/pkg/adaptive"
	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/flush"
	"github.com/wanpin/wanpin/pkg/health"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/lease"
	"github.com/wanpin/wanpin/pkg/neighbours"
	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
	"github.com/wanpin/wanpin/pkg/rules"
	"github.com/wanpin/wanpin/pkg/tables"
	"github.com/wanpin/wanpin/pkg/watch"
)

// Options configure a Daemon.
type Options struct {
	ConfigPath string
	Log        *slog.Logger
	// ProcSys is where the namespace's sysctls live (default /proc/sys).
	ProcSys string
	// NewFlusher opens a conntrack connection; nil: entries are never
	// flushed (tests of the routing alone).
	NewFlusher func() (Flusher, error)
	// HooksDir holds executables run on every uplink transition.
	HooksDir string
	// NoTableOwner: do not claim the nftables table (owner flag), so
	// other tools may delete it; drift repair then puts it back.
	NoTableOwner bool
	// RuntimeDir holds the lease files the DHCP hooks write (default
	// /run/wanpin).
	RuntimeDir string
	// StateDir keeps what outlives the daemon: the data quotas' counts
	// (default /var/lib/wanpin).
	StateDir string
	// RTTables are the files that name routing tables (default
	// /etc/iproute2/rt_tables, rt_tables.d/*.conf and the same under
	// /usr/share/iproute2): a named id is never chosen for an uplink.
	RTTables []string
}

// Flusher deletes and counts conntrack entries (pkg/flush).
type Flusher interface {
	// FlushMark deletes the entries of one family whose ct mark & mask ==
	// mark.
	FlushMark(mark, mask uint32, f inet.Family) (int, error)
	FlushNATAddr(addr netip.Addr) (int, error)
	// Evict moves one family's connections pinned to mark off for
	// failback: TCP entries get the ct mark evict, the others go.
	Evict(mark, mask, evict uint32, f inet.Family) (reset, deleted int, err error)
	// Repin carries the pinned entries over a reload that changed the
	// marks: each move's entries get its new mark, or go.
	Repin(oldMask, newMask uint32, moves []flush.Move) ([]int, error)
	CountByMark(mask uint32) (map[uint32]int, error)
	Close() error
}

// NFTables is wanpin's nftables table in the kernel (pkg/rules).
type NFTables interface {
	Apply(desired.NFT) error
	Remove() error
	Missing() ([]string, error)
	WatchDeletions(ctx context.Context, log *slog.Logger) <-chan time.Time
	LastCommit() time.Duration
	Close() error
}

// Routing is wanpin's rules and routes in the kernel (pkg/tables).
type Routing interface {
	Apply(desired.Routing) (tables.Result, error)
	Remove() (tables.Result, error)
	Current() (desired.Routing, error)
	ForeignTables() (tables.Foreign, error)
	Contested([]desired.Route) (map[string]string, error)
	Close()
}

// Daemon is the running control loop.
type Daemon struct {
	opts Options
	log  *slog.Logger

	state core.State // owned by the loop

	nft      NFTables
	routing  Routing
	obs      *watch.Observer
	cgroups  *cgroups.Resolver
	flusher  Flusher     // used by the loop
	tables   core.Tables // chosen in New, for Start
	hooks    *hookRunner
	notify   *notifier
	monitors map[core.Key]*health.Monitor
	verdicts chan health.Event
	retry    *time.Timer
	observe  *time.Timer // ObserveAfter
	runCtx   context.Context

	// Figures only the executor sees.
	flushed     map[string]uint64
	failedBack  map[string]uint64 // connections moved off each uplink by failback
	loosened    map[string]string // interface -> the rp_filter it had before wanpin loosened it
	meter       trafficMeter
	traffic     map[string]core.Traffic // by uplink, from its interface's counters, refreshed on the loop
	adapt       *adaptive.Estimator     // the weight = "auto" uplinks' estimates, fed from the counters
	estimates   map[string]adaptive.Estimate
	applies     uint64
	applyErrors uint64
	// routeConflicts: what the latest routing apply left to other
	// programs' routes (nil: no routing applied since the last step).
	routeConflicts []core.RouteConflict

	teardownErr error // what removing the state at SIGTERM returned

	pub      *publisher // the status, for readers off the loop
	requests chan func()
	stopped  chan struct{}
	lock     *instanceLock // one daemon per network namespace
	execSeq  int           // the last exec cgroup's number
	// startConflicts: what the conflict check found at start; cfgNow the
	// configuration the neighbours watch judges against.
	startConflicts []neighbours.Finding
	cfgNow         atomic.Pointer[config.Config]
	// domains learns the domain policies' addresses from DNS answers
	// (nil when the NFTables cannot take them, as in tests); learned
	// reads them back for explain.
	domains *domainLearner
	learned *learnedView
	mptcp   mptcpState // the kernel's MPTCP path manager, for the executor
}

// New loads the configuration and connects to the kernel. Nothing is
// changed until Run.
func New(opts Options) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.ProcSys == "" {
		opts.ProcSys = "/proc/sys"
	}
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = "/run/wanpin"
	}
	if opts.RTTables == nil {
		opts.RTTables = DefaultRTTables
	}
	if opts.StateDir == "" {
		opts.StateDir = quota.DefaultDir
	}
	cfg, err := config.Load(opts.ConfigPath)
	if err != nil {
		return nil, err
	}
	lock, err := lockInstance()
	if err != nil {
		return nil, err
	}
	d := &Daemon{lock: lock, opts: opts, log: opts.Log, state: core.NewState(cfg),
		requests: make(chan func()), stopped: make(chan struct{}),
		hooks: newHookRunner(opts.HooksDir, opts.Log), notify: newNotifier(),
		monitors: map[core.Key]*health.Monitor{}, verdicts: make(chan health.Event, 64),
		flushed: map[string]uint64{}, failedBack: map[string]uint64{}, loosened: map[string]string{}, traffic: map[string]core.Traffic{},
		adapt: adaptive.New(adaptive.DefaultParams(), core.AutoLinks(cfg))}
	// The daemon manages the network namespace it runs in (the lab starts
	// it inside the router's namespace).
	var nftOpts []rules.Option
	if opts.NoTableOwner {
		nftOpts = append(nftOpts, rules.WithoutOwner())
	}
	nft, err := rules.New(nftOpts...)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("connecting to nftables: %w", err)
	}
	d.nft = nft
	if d.routing, err = tables.New(netns.None()); err != nil {
		d.close()
		return nil, err
	}
	if d.obs, err = watch.NewObserver(netns.None()); err != nil {
		d.close()
		return nil, err
	}
	var counter Flusher
	if opts.NewFlusher != nil {
		if d.flusher, err = opts.NewFlusher(); err != nil {
			d.close()
			return nil, fmt.Errorf("connecting to conntrack: %w", err)
		}
		if counter, err = opts.NewFlusher(); err != nil {
			d.close()
			return nil, fmt.Errorf("connecting to conntrack: %w", err)
		}
	}
	d.pub = newPublisher(counter, d.log)
	var sr stickyReader = nft
	d.pub.sticky = &stickyView{read: sr.StickyEntries}
	var lw learnedWriter = nft
	d.domains = newDomainLearner(lw, d.log)
	d.learned = &learnedView{read: lw.LearnedEntries}
	d.pub.domains = d.domains
	if d.cgroups, err = cgroups.NewResolver(); err != nil {
		d.log.Warn("cgroup v2 not found: service policies match nothing", "err", err)
		d.cgroups = &cgroups.Resolver{}
	}
	// The routing tables are chosen now, where the kernel's can be seen;
	// a configured table that holds another program's routes refuses to
	// start before anything is changed.
	if d.tables, err = d.assignTables(cfg, core.Tables{}); err != nil {
		d.close()
		return nil, err
	}
	// Another program's rules that clash with wanpin's marks or rule
	// block refuse the start, before anything is changed, unless the
	// file allows them.
	rep, err := checkNeighbours(cfg)
	if len(rep.Breaking()) > 0 {
		d.close()
		return nil, err
	}
	if err != nil {
		d.log.Warn("other programs' rules not checked", "err", err)
	}
	for _, u := range rep.Unread {
		d.log.Warn("other programs' rules not checked", "what", u)
	}
	d.startConflicts = rep.Findings
	d.cfgNow.Store(cfg)
	return d, nil
}

// assignTables chooses the uplinks' routing tables (core.AssignTables)
// from what the kernel and rt_tables say, and logs each choice that had
// to skip an id, and each table in use that another program's rule looks
// up.
func (d *Daemon) assignTables(cfg *config.Config, prev core.Tables) (core.Tables, error) {
	foreign, err := d.routing.ForeignTables()
	if err != nil {
		return core.Tables{}, fmt.Errorf("reading the kernel's routing tables and rules: %w", err)
	}
	use := core.TableUse{Foreign: foreign.Routes, Rules: foreign.Rules, Named: NamedTables(d.opts.RTTables)}
	t, notes, err := core.AssignTables(cfg, use, prev)
	if err != nil {
		return t, err
	}
	for _, n := range notes.Chosen {
		d.log.Info("routing table chosen", "choice", n)
	}
	for _, n := range notes.Warnings {
		d.log.Warn("routing table shared with another program's rule", "reason", n)
	}
	return t, nil
}

// Run applies the configuration and follows events until ctx ends, then
// removes everything wanpin installed. reload receives SIGHUP.
func (d *Daemon) Run(ctx context.Context, reload <-chan struct{}) error {
	defer close(d.stopped)
	defer d.close()
	if v, err := os.ReadFile(filepath.Join(d.opts.ProcSys, "net/ipv4/ip_forward")); err == nil && string(v) != "1\n" {
		d.log.Warn("net.ipv4.ip_forward is off: the LAN's traffic will not be forwarded")
	}
	d.loadMemory()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.runCtx = wctx
	defer d.stopMonitors()
	changed := watch.Watch(wctx, netns.None(), d.log)
	// SIGHUP: the file is read here, off the loop, one reload at a time;
	// the loop takes what was read.
	loads := make(chan loaded)
	go func() {
		for {
			select {
			case <-wctx.Done():
				return
			case <-reload:
			}
			l := d.load()
			select {
			case loads <- l:
			case <-wctx.Done():
				return
			}
		}
	}()
	// Deletions of wanpin's nftables tables are heard at once (a firewall
	// reload's flush ruleset on a kernel without the owner flag); the
	// drift ticker still looks at everything twice a second.
	deleted := d.nft.WatchDeletions(wctx, d.log)
	services := time.NewTicker(2 * time.Second)
	defer services.Stop()
	drift := time.NewTicker(DriftInterval)
	defer drift.Stop()
	// Traffic counters for status and metrics, read on the loop's own
	// pace: a scrape never reads the kernel.
	counters := time.NewTicker(time.Second)
	defer counters.Stop()
	d.refreshTraffic() // the base: what the interfaces counted before the start is not wanpin's
	d.retry = time.NewTimer(time.Hour)
	d.retry.Stop()
	d.observe = time.NewTimer(time.Hour)
	d.observe.Stop()

	links, err := d.snapshot()
	if err != nil {
		d.log.Error("reading interfaces", "err", err)
		d.retry.Reset(core.RetryDelay)
	}
	d.step(core.Start{Links: links, Cgroups: d.resolveServices(d.state.Config), Leases: d.readLeases(), Tables: d.tables,
		Quotas: d.loadQuotas()})
	d.step(core.Neighbours{Findings: d.startConflicts})
	conflicts := make(chan []neighbours.Finding)
	go d.watchNeighbours(wctx, &d.cfgNow, conflicts)
	var watchdog <-chan time.Time
	if iv := d.notify.watchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case <-ctx.Done():
			// What was counted since the last reading is saved too.
			d.refreshTraffic()
			d.countQuotas()
			d.step(core.Stop{})
			return d.teardownErr
		case <-watchdog:
			// Petted from the loop: if the loop hangs, systemd notices.
			d.notify.send("WATCHDOG=1")
		case <-changed:
			if links, err := d.snapshot(); err != nil {
				d.log.Error("reading interfaces", "err", err)
				d.retry.Reset(core.RetryDelay)
			} else {
				d.step(core.Observed{Links: links, Trigger: "netlink"})
			}
		case l := <-loads:
			_ = d.reload(l)
		case f := <-d.requests:
			f()
		case found := <-conflicts:
			d.step(core.Neighbours{Findings: found})
		case ev := <-d.verdicts:
			d.step(core.HealthVerdict{Key: core.Key{Uplink: ev.Uplink, Family: ev.Family},
				Verdict: core.Verdict{Healthy: ev.Healthy, Reason: ev.Reason}})
		case <-drift.C:
			// A deletion heard already but not yet taken from the channel
			// is what this check repairs: its time gives the delay.
			var at time.Time
			select {
			case at = <-deleted:
			default:
			}
			d.checkDrift(driftAll, at, deleted)
		case at := <-deleted:
			d.checkDrift(driftNFT, at, nil)
		case <-services.C:
			d.reapExecs()
			if cg := d.resolveServices(d.state.Config); !cgroupsEqual(cg, d.state.Cgroups) {
				d.step(core.Services{Cgroups: cg})
			}
		case <-counters.C:
			d.countMPTCP()
			d.refreshTraffic()
			d.countQuotas()
			d.adaptWeights()
			d.publish()
		case <-d.observe.C:
			if links, err := d.snapshot(); err != nil {
				d.log.Error("reading interfaces", "err", err)
				d.retry.Reset(core.RetryDelay)
			} else {
				d.step(core.Observed{Links: links, Trigger: "timer"})
			}
		case <-d.retry.C:
			links, err := d.snapshot()
			if err != nil {
				d.log.Error("reading interfaces", "err", err)
				d.retry.Reset(core.RetryDelay)
				continue
			}
			d.step(core.Retry{Links: links, Leases: d.readLeases()})
		}
	}
}

func (d *Daemon) close() {
	if d.domains != nil {
		d.domains.close()
	}
	if d.mptcp.client != nil {
		d.mptcp.client.Close()
	}
	if d.nft != nil {
		d.nft.Close()
	}
	if d.routing != nil {
		d.routing.Close()
	}
	if d.obs != nil {
		d.obs.Close()
	}
	if d.flusher != nil {
		d.flusher.Close()
	}
	if d.pub != nil {
		d.pub.close()
	}
	d.lock.release()
}

func (d *Daemon) snapshot() (map[string]core.Link, error) {
	names := make([]string, len(d.state.Config.Uplinks))
	for i, u := range d.state.Config.Uplinks {
		names[i] = u.Interface
	}
	return d.obs.Snapshot(names)
}

// step runs one input through the machine and carries out its effects.
// It returns the machine's refusal, for requests.
func (d *Daemon) step(in core.Input) error {
	res := core.Step(d.state, time.Now(), in)
	d.state = res.State
	// Published as decided, before the effects run: status and metrics
	// agree with the transition's log line (the first effect) at once,
	// not only once the applies and conntrack flushes are done; published
	// again after them, for the counts they change.
	d.publish()
	d.routeConflicts = nil
	if err := d.execute(res.Effects); err != nil {
		// The kernel refused an apply: the machine forgets what it thinks
		// is applied and asks for a retry.
		next := core.Step(d.state, time.Now(), core.ApplyFailed{Err: err})
		d.state = next.State
		_ = d.execute(next.Effects)
	} else if d.routeConflicts != nil {
		// The routing went in, but for the routes another program's
		// routes hold the places of: the machine logs the new conflicts
		// (once) and those that ended.
		next := core.Step(d.state, time.Now(), core.RoutingConflicts{Conflicts: d.routeConflicts})
		d.state = next.State
		_ = d.execute(next.Effects)
	}
	d.routeConflicts = nil
	d.publish()
	return res.Err
}

// loaded is a configuration read (or refused) off the loop, for the loop
// to take: a file at the limits takes about a second to parse, which
// the loop must not spend away from its links and probes.
type loaded struct {
	cfg *config.Config
	err error
}

func (d *Daemon) load() loaded {
	cfg, err := config.Load(d.opts.ConfigPath)
	return loaded{cfg, err}
}

// reload takes a configuration load() read. A bad file changes nothing:
// the running configuration and the kernel state stay as they are.
func (d *Daemon) reload(l loaded) error {
	if l.err != nil {
		return d.step(core.ReloadRejected{Err: l.err})
	}
	cfg := l.cfg
	tables, err := d.assignTables(cfg, d.state.Tables)
	if err != nil {
		return d.step(core.ReloadRejected{Err: err})
	}
	if rep, err := checkNeighbours(cfg); len(rep.Breaking()) > 0 {
		return d.step(core.ReloadRejected{Err: err})
	}
	err = d.step(core.Reload{Config: cfg, Cgroups: d.resolveServices(cfg), Tables: tables})
	d.cfgNow.Store(d.state.Config)
	if err == nil {
		d.reloadWeights()
	}
	return err
}

// resolveServices resolves the policies' services to cgroup ids (a unit
// started, stopped or restarted changes them).
func (d *Daemon) resolveServices(cfg *config.Config) map[string][]policy.CgroupMatch {
	out := map[string][]policy.CgroupMatch{}
	for _, p := range cfg.Policies {
		for _, svc := range p.Services {
			m, err := d.cgroups.Resolve(svc)
			if err != nil {
				d.log.Warn("resolving service", "policy", p.Name, "service", svc, "err", err)
			}
			out[svc] = m
		}
	}
	return out
}

// readLeases loads the lease files of the uplinks' interfaces.
func (d *Daemon) readLeases() map[core.LeaseKey]core.Lease {
	var ifaces []string
	for _, u := range d.state.Config.Uplinks {
		ifaces = append(ifaces, u.Interface)
	}
	leases, errs := lease.ReadAll(d.opts.RuntimeDir, ifaces)
	for _, err := range errs {
		d.log.Warn("ignoring a lease file", "err", err)
	}
	return leases
}

// loadQuotas reads the quotas' counts the state directory kept. A file
// that is corrupt or not wanpin's is logged and ignored: the quotas
// count from zero, and the next save replaces it.
func (d *Daemon) loadQuotas() map[string]quota.Usage {
	u, err := quota.Load(d.opts.StateDir)
	if err != nil {
		d.log.Warn("ignoring the quota state file: counting from zero", "err", err)
		return nil
	}
	return u
}

// countQuotas hands the machine the latest traffic reading, when some
// uplink has a quota (a reading changes nothing else: without quotas
// the loop does not step for it).
func (d *Daemon) countQuotas() {
	if len(d.state.Quotas) == 0 {
		return
	}
	bytes := make(map[string]uint64, len(d.traffic))
	for name, t := range d.traffic {
		bytes[name] = t.InBytes + t.OutBytes
	}
	d.step(core.TrafficReading{Bytes: bytes})
}

func cgroupsEqual(a, b map[string][]policy.CgroupMatch) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || len(va) != len(vb) {
			return false
		}
		for i := range va {
			if va[i] != vb[i] {
				return false
			}
		}
	}
	return true
}
