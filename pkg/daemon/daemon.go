// Package daemon is wanpin's control loop: one goroutine owns every state
// change. Events (netlink changes, SIGHUP, service restarts) only change its
// inputs; it recomputes the desired state with plan.Build and lets the
// reconcilers make the kernel match.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/health"
	"github.com/wanpin/wanpin/pkg/plan"
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
}

// Flusher deletes and counts conntrack entries (pkg/ctflush).
type Flusher interface {
	// FlushMark deletes the entries whose ct mark & mask == mark, of the
	// families asked for.
	FlushMark(mark, mask uint32, v4, v6 bool) (int, error)
	FlushNATAddr(addr netip.Addr) (int, error)
	CountByMark(mask uint32) (map[uint32]int, error)
	Close() error
}

// UplinkStatus is what the daemon knows of one uplink.
type UplinkStatus struct {
	Name, Interface string
	Up              bool // some family carries new connections
	State           plan.UplinkState
	Reason          string
	Since           time.Time
	// Per family: usable, why, since when.
	V4, V6 FamilyStatus
}

// FamilyStatus is one address family of an uplink.
type FamilyStatus struct {
	Up     bool
	Reason string
	Since  time.Time
}

// Family returns one family's status.
func (s *UplinkStatus) Family(v6 bool) *FamilyStatus {
	if v6 {
		return &s.V6
	}
	return &s.V4
}

// Daemon is the running control loop.
type Daemon struct {
	opts Options
	log  *slog.Logger

	cfg      *config.Config
	nft      *rules.Manager
	tbl      *tables.Manager
	obs      *watch.Observer
	cgroups  *cgroups.Resolver
	resolved map[string][]rules.CgroupMatch

	status  map[string]*UplinkStatus
	applied *plan.Desired  // last state the kernel was brought to
	tuned   map[string]int // interface -> ifindex whose sysctls were set
	retry   *time.Timer
	hints   map[string]Hint // by interface, from PPP hooks

	flusher Flusher // used by the loop
	counter Flusher // used by Status, outside the loop

	hooks       *hookRunner
	notify      *notifier
	maintenance map[string]bool // uplinks forced out of service (wanpin down)
	execs       map[string]execEntry
	execMatch   map[string]rules.CgroupMatch

	// Health probes: one monitor per uplink and family with targets in
	// its [uplink.health] table, and the verdicts they sent (none yet: the
	// link state decides).
	monitors     map[famKey]*health.Monitor
	specs        map[famKey]health.Spec
	verdicts     map[famKey]health.Event
	healthEvents chan health.Event
	runCtx       context.Context

	// Figures for metrics. Traffic counters live in the nftables table,
	// which every apply replaces: what they held is added here first.
	transitions map[string]uint64
	flushed     map[string]uint64
	traffic     map[string]rules.UplinkTraffic
	applies     uint64
	applyErrors uint64

	requests chan func()   // work for the loop, from control requests
	stopped  chan struct{} // closed when Run returns
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
	cfg, err := config.Load(opts.ConfigPath)
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Log, cfg: cfg, status: map[string]*UplinkStatus{}, tuned: map[string]int{},
		hints: map[string]Hint{}, requests: make(chan func()), stopped: make(chan struct{}),
		hooks: newHookRunner(opts.HooksDir, opts.Log), notify: newNotifier(), maintenance: map[string]bool{},
		execs: map[string]execEntry{}, execMatch: map[string]rules.CgroupMatch{},
		monitors: map[famKey]*health.Monitor{}, specs: map[famKey]health.Spec{}, verdicts: map[famKey]health.Event{}, healthEvents: make(chan health.Event, 64),
		transitions: map[string]uint64{}, flushed: map[string]uint64{}, traffic: map[string]rules.UplinkTraffic{}}
	// The daemon manages the network namespace it runs in (the lab starts
	// it inside the router's namespace).
	var nftOpts []rules.Option
	if opts.NoTableOwner {
		nftOpts = append(nftOpts, rules.WithoutOwner())
	}
	if d.nft, err = rules.New(nftOpts...); err != nil {
		return nil, fmt.Errorf("connecting to nftables: %w", err)
	}
	if d.tbl, err = tables.New(netns.None()); err != nil {
		d.nft.Close()
		return nil, err
	}
	if d.obs, err = watch.NewObserver(netns.None()); err != nil {
		d.nft.Close()
		d.tbl.Close()
		return nil, err
	}
	if opts.NewFlusher != nil {
		if d.flusher, err = opts.NewFlusher(); err != nil {
			d.close()
			return nil, fmt.Errorf("connecting to conntrack: %w", err)
		}
		if d.counter, err = opts.NewFlusher(); err != nil {
			d.close()
			return nil, fmt.Errorf("connecting to conntrack: %w", err)
		}
	}
	if d.cgroups, err = cgroups.NewResolver(); err != nil {
		d.log.Warn("cgroup v2 not found: service policies match nothing", "err", err)
		d.cgroups = &cgroups.Resolver{}
	}
	return d, nil
}

// Run applies the configuration and follows events until ctx ends, then
// removes everything wanpin installed. reload receives SIGHUP.
func (d *Daemon) Run(ctx context.Context, reload <-chan struct{}) error {
	defer close(d.stopped)
	defer d.close()
	d.log.Info("starting", "config", d.opts.ConfigPath, "uplinks", len(d.cfg.Uplinks), "policies", len(d.cfg.Policies))
	d.setGlobalSysctls()
	d.resolveServices()

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.runCtx = wctx
	d.startMonitors()
	defer d.stopMonitors()
	changed := watch.Watch(wctx, netns.None(), d.log)
	services := time.NewTicker(2 * time.Second)
	defer services.Stop()
	drift := time.NewTicker(DriftInterval)
	defer drift.Stop()
	d.retry = time.NewTimer(time.Hour)
	d.retry.Stop()

	d.sync("start")
	if err := d.notify.ready(); err != nil {
		d.log.Warn("telling systemd we are ready", "err", err)
	}
	var watchdog <-chan time.Time
	if d.notify.watchdog > 0 {
		t := time.NewTicker(d.notify.watchdog)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case <-ctx.Done():
			d.notify.stopping()
			return d.teardown()
		case <-watchdog:
			// Petted from the loop: if the loop hangs, systemd notices.
			d.notify.pet()
		case <-changed:
			d.sync("netlink")
		case <-reload:
			_ = d.reload()
		case f := <-d.requests:
			f()
		case ev := <-d.healthEvents:
			if k := (famKey{ev.Uplink, ev.V6}); d.monitors[k] != nil {
				d.verdicts[k] = ev
				d.sync("health probes")
			}
		case <-drift.C:
			d.checkDrift()
		case <-services.C:
			if d.reapExecs() {
				d.sync("exec ended")
			}
			if d.resolveServices() {
				d.sync("service cgroup changed")
			}
		case <-d.retry.C:
			d.applied = nil
			d.sync("retry")
		}
	}
}

func (d *Daemon) close() {
	if d.nft != nil {
		d.nft.Close()
	}
	if d.tbl != nil {
		d.tbl.Close()
	}
	if d.obs != nil {
		d.obs.Close()
	}
	if d.flusher != nil {
		d.flusher.Close()
	}
	if d.counter != nil {
		d.counter.Close()
	}
}

// reload re-reads the configuration. A bad file changes nothing: the
// running configuration and the kernel state stay as they are.
func (d *Daemon) reload() error {
	d.notify.reloading()
	defer d.notify.ready()
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		d.log.Error("reload rejected, keeping the running configuration", "err", err)
		return err
	}
	d.cfg = cfg
	// Probes follow the new configuration; verdicts of uplinks whose
	// probing did not change are kept.
	d.restartMonitors()
	d.log.Info("configuration reloaded", "uplinks", len(cfg.Uplinks), "policies", len(cfg.Policies))
	d.resolveServices()
	d.applied = nil
	d.sync("reload")
	return nil
}

// sync observes the uplinks, recomputes the desired state and applies
// what changed.
func (d *Daemon) sync(why string) {
	names := make([]string, len(d.cfg.Uplinks))
	for i, u := range d.cfg.Uplinks {
		names[i] = u.Interface
	}
	links, err := d.obs.Snapshot(names)
	if err != nil {
		d.log.Error("reading interfaces", "err", err)
		d.scheduleRetry()
		return
	}
	states := map[string]plan.UplinkState{}
	wentDown := false
	var flushes []familyFlush // families that went down: flush their entries
	oldAddrs := usedAddrs(d.cfg, d.status)
	seen := map[string]bool{}
	now := time.Now()
	for _, u := range d.cfg.Uplinks {
		seen[u.Name] = true
		l := links[u.Interface]
		st, rs := Observe(u, l, d.hint(l))
		for _, v6 := range []bool{false, true} {
			fs := familyOf(&st, v6)
			if v, ok := d.verdict(u.Name, v6); ok && !v.Healthy && fs.Up {
				fs.Unhealthy = true
				*rs.of(v6) = "health probes: " + v.Reason
			}
		}
		if d.maintenance[u.Name] && st.LinkUp() {
			// Forced out of service by the admin: routes stay (so it can
			// be tested by hand), new connections avoid it.
			st.SetUnhealthy()
			rs.V4 = "taken out of service by the admin (wanpin down " + u.Name + ")"
			rs.V6 = rs.V4
		}
		reason := rs.String(st)
		states[u.Name] = st
		if l.Exists {
			d.tuneInterface(l)
		}
		old, known := d.status[u.Name]
		if !known || old.Interface != u.Interface {
			old = &UplinkStatus{Name: u.Name, Interface: u.Interface, Since: now}
			old.V4.Since, old.V6.Since = now, now
			d.status[u.Name] = old
		}
		ff := familyFlush{uplink: u.Name}
		for _, v6 := range []bool{false, true} {
			up := st.Family(v6).Usable()
			fst := old.Family(v6)
			if known && fst.Up && !up {
				wentDown = true
				if v6 {
					ff.v6 = true
				} else {
					ff.v4 = true
				}
			}
			if known && fst.Up != up {
				d.log.Info("uplink "+famName(v6)+" "+upDown(up), "uplink", u.Name, "interface", u.Interface,
					"family", famName(v6), "reason", *rs.of(v6), "trigger", why)
				fst.Since = now
			}
			fst.Up, fst.Reason = up, *rs.of(v6)
		}
		if ff.v4 || ff.v6 {
			flushes = append(flushes, ff)
		}
		if !known || old.Up != st.Up() {
			d.log.Info("uplink "+upDown(st.Up()), "uplink", u.Name, "interface", u.Interface, "reason", reason, "trigger", why)
			if known {
				d.transitions[u.Name]++
				d.hooks.transition(u.Name, u.Interface, upDown(st.Up()), reason)
			}
			old.Since = now
		}
		old.Up, old.State, old.Reason = st.Up(), st, reason
	}
	for name := range d.status {
		if !seen[name] {
			delete(d.status, name)
		}
	}
	want := plan.Build(plan.Input{Config: d.cfg, Uplinks: states, Cgroups: d.resolved, Execs: d.execList()})
	if err := d.apply(want, wentDown); err != nil {
		d.log.Error("applying state", "err", err, "trigger", why)
		d.scheduleRetry()
	}
	// Only now, with the uplink out of the balancing and its packets
	// dropped, are its conntrack entries flushed: a new packet of such a
	// flow (a UDP stream with a fixed 5-tuple) then starts a new entry on
	// a live uplink instead of finding the dead one again.
	d.flush(flushes, oldAddrs, usedAddrs(d.cfg, d.status))
}

// verdict is what health probes say of one family of an uplink: its own
// targets' verdict, or, when it has no targets of its own, the other
// family's (an ISP that forwards nothing usually forwards neither family,
// and an admin who lists only IPv4 targets expects them to guard the
// uplink as a whole).
func (d *Daemon) verdict(uplink string, v6 bool) (health.Event, bool) {
	if _, own := d.monitors[famKey{uplink, v6}]; own {
		v, ok := d.verdicts[famKey{uplink, v6}]
		return v, ok
	}
	v, ok := d.verdicts[famKey{uplink, !v6}]
	return v, ok
}

// familyFlush: the families of an uplink whose pinned entries must go.
type familyFlush struct {
	uplink string
	v4, v6 bool
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

func familyOf(st *plan.UplinkState, v6 bool) *plan.FamilyState {
	if v6 {
		return &st.V6
	}
	return &st.V4
}

// flush deletes the conntrack entries of uplinks that went down (by
// their mark) and the entries NATed to addresses an uplink lost (a PPP
// re-dial or a new DHCP lease). Nothing else is touched.
func (d *Daemon) flush(down []familyFlush, before, after map[string][]netip.Addr) {
	if d.flusher == nil {
		return
	}
	for _, ff := range down {
		for i, u := range d.cfg.Uplinks {
			if u.Name != ff.uplink {
				continue
			}
			mark := d.cfg.UplinkMark(i)
			fams := "IPv4 and IPv6"
			if !ff.v4 || !ff.v6 {
				fams = famName(ff.v6)
			}
			n, err := d.flusher.FlushMark(mark, d.cfg.MarkMask, ff.v4, ff.v6)
			if err != nil {
				d.log.Error("flushing conntrack entries", "uplink", u.Name, "family", fams, "err", err)
				continue
			}
			d.flushed[u.Name] += uint64(n)
			d.log.Info("conntrack flushed", "uplink", u.Name, "family", fams, "mark", fmt.Sprintf("%#x", mark),
				"entries", n, "reason", "uplink down")
		}
	}
	for name, old := range before {
		for _, a := range old {
			if containsAddr(after[name], a) {
				continue
			}
			n, err := d.flusher.FlushNATAddr(a)
			if err != nil {
				d.log.Error("flushing conntrack entries", "uplink", name, "address", a, "err", err)
				continue
			}
			d.flushed[name] += uint64(n)
			d.log.Info("conntrack flushed", "uplink", name, "address", a.String(), "entries", n, "reason", "address gone")
		}
	}
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// hint returns the PPP hook's hint for an interface, binding it to the
// interface instance it was given for: a PPP link that is re-dialled gets
// a new interface index, and an old session's hint must not stick to it.
func (d *Daemon) hint(l watch.Link) Hint {
	h, ok := d.hints[l.Name]
	if !ok {
		return Hint{}
	}
	switch {
	case !l.Exists && h.Down:
		// ip-down, then the interface went away: the hint did its job.
		delete(d.hints, l.Name)
		return Hint{}
	case !l.Exists:
		return h
	case h.Index == 0:
		h.Index = l.Index
		d.hints[l.Name] = h
	case h.Index != l.Index:
		delete(d.hints, l.Name)
		return Hint{}
	}
	return h
}

// apply brings the kernel to want. When an uplink went down the nftables
// table goes first: in one transaction the uplink leaves the balancing and
// its pinned connections stop being routed, before its routes change.
// Otherwise routes go first, so that a mark handed out by the new table
// always finds its route.
func (d *Daemon) apply(want plan.Desired, nftFirst bool) error {
	nftChanged := d.applied == nil || !reflect.DeepEqual(d.applied.NFT, want.NFT)
	tblChanged := d.applied == nil || !reflect.DeepEqual(d.applied.Tables, want.Tables)
	steps := []func() error{
		func() error {
			if !tblChanged {
				return nil
			}
			res, err := d.tbl.Apply(want.Tables)
			if err != nil {
				return err
			}
			if res.Changed() {
				d.log.Info("routing applied", "rules_added", res.RulesAdded, "rules_deleted", res.RulesDeleted,
					"routes_added", res.RoutesAdded, "routes_deleted", res.RoutesDeleted)
			}
			return nil
		},
		func() error {
			if !nftChanged {
				return nil
			}
			d.saveTraffic()
			if err := d.nft.Apply(want.NFT); err != nil {
				return err
			}
			d.log.Info("nftables applied", "table", want.NFT.Table, "uplinks_up", d.countUp(), "policies", len(want.NFT.Policies))
			return nil
		},
	}
	if nftFirst {
		steps[0], steps[1] = steps[1], steps[0]
	}
	d.applies++
	for _, step := range steps {
		if err := step(); err != nil {
			d.applyErrors++
			d.applied = nil
			return err
		}
	}
	d.applied = &want
	return nil
}

// countUp counts the uplinks that carry new connections of some family.
func (d *Daemon) countUp() int {
	n := 0
	for _, s := range d.status {
		if s.Up {
			n++
		}
	}
	return n
}

func (d *Daemon) scheduleRetry() {
	d.retry.Reset(time.Second)
}

// teardown removes everything wanpin installed (SIGTERM): the router falls
// back to plain routing by the main table.
func (d *Daemon) teardown() error {
	var errs []error
	if err := d.nft.Remove(); err != nil {
		errs = append(errs, fmt.Errorf("removing the nftables table: %w", err))
	}
	res, err := d.tbl.Remove()
	if err != nil {
		errs = append(errs, fmt.Errorf("removing rules and routes: %w", err))
	}
	d.log.Info("stopped, state removed", "rules_deleted", res.RulesDeleted, "routes_deleted", res.RoutesDeleted)
	return errors.Join(errs...)
}

// resolveServices re-resolves the policies' services to cgroup ids and
// reports whether anything changed (a unit started, stopped or restarted).
func (d *Daemon) resolveServices() bool {
	next := map[string][]rules.CgroupMatch{}
	for _, p := range d.cfg.Policies {
		for _, svc := range p.Services {
			m, err := d.cgroups.Resolve(svc)
			if err != nil {
				d.log.Warn("resolving service", "policy", p.Name, "service", svc, "err", err)
			}
			next[svc] = m
		}
	}
	if reflect.DeepEqual(next, d.resolved) {
		return false
	}
	for svc, m := range next {
		if !reflect.DeepEqual(m, d.resolved[svc]) {
			d.log.Info("service cgroup", "service", svc, "matches", fmt.Sprint(m))
		}
	}
	d.resolved = next
	return true
}

// setGlobalSysctls sets what policy routing with marks needs: without
// src_valid_mark, the reverse-path filter validates a marked packet's
// source without its mark and drops replies on the non-default uplinks.
func (d *Daemon) setGlobalSysctls() {
	d.sysctl("net/ipv4/conf/all/src_valid_mark", "1")
	if v, err := os.ReadFile(filepath.Join(d.opts.ProcSys, "net/ipv4/ip_forward")); err == nil && string(v) != "1\n" {
		d.log.Warn("net.ipv4.ip_forward is off: the LAN's traffic will not be forwarded")
	}
}

// tuneInterface sets loose reverse-path filtering on an uplink: replies
// arrive on the uplink their connection is pinned to, which is often not
// the one the main table would route back through. The effective value is
// the maximum of "all" and the interface's, so 2 here is loose whatever
// "all" says. Set again when the interface is re-created (new ifindex).
func (d *Daemon) tuneInterface(l watch.Link) {
	if d.tuned[l.Name] == l.Index {
		return
	}
	if d.sysctl("net/ipv4/conf/"+l.Name+"/rp_filter", "2") {
		d.tuned[l.Name] = l.Index
	}
}

func (d *Daemon) sysctl(key, value string) bool {
	path := filepath.Join(d.opts.ProcSys, key)
	cur, err := os.ReadFile(path)
	if err == nil && string(cur) == value+"\n" {
		return true
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		d.log.Warn("setting sysctl", "key", key, "value", value, "err", err)
		return false
	}
	d.log.Info("sysctl set", "key", key, "value", value, "was", string(trimNL(cur)))
	return true
}

func trimNL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}
