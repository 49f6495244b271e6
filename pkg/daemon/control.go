package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wanpin/wanpin/internal/rtnl"
	"github.com/wanpin/wanpin/pkg/bus"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/lease"
	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/rules"
)

// ErrStopped is returned by requests made while the loop is not running.
var ErrStopped = errors.New("wanpin is stopping")

// do runs f on the loop goroutine, which owns all state, and waits for it.
func (d *Daemon) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case d.requests <- func() { f(); close(done) }:
	case <-d.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-d.stopped:
		return ErrStopped
	}
}

// doStep runs one input through the machine on the loop and returns the
// machine's refusal, if any.
func (d *Daemon) doStep(ctx context.Context, in core.Input) error {
	var serr error
	if err := d.do(ctx, func() { serr = d.step(in) }); err != nil {
		return err
	}
	return serr
}

// Status reports every uplink. It never waits for the loop: it reads what
// the loop published after its last step, with the probes' latest figures
// and pinned-connection counts at most PinnedInterval old.
func (d *Daemon) Status(ctx context.Context) (core.Status, error) {
	select {
	case <-d.stopped:
		return core.Status{}, ErrStopped
	default:
	}
	return d.pub.get(), nil
}

// Explain says what the table now applied does to a new connection: the
// same evaluation `wanpin explain` does without a daemon, on the daemon's
// own desired state (its configuration, uplinks' states, resolved
// services and running execs). It never waits for the loop.
func (d *Daemon) Explain(ctx context.Context, f policy.Flow) (core.Explanation, error) {
	x := d.pub.explain()
	var (
		sets    []rules.DomainSet
		entries map[string][]rules.LearnedEntry
		at      time.Time
	)
	if d.domains != nil && d.learned != nil {
		if r := d.domains.routes.Load(); r != nil {
			sets = r.sets
			entries, at = d.learned.snapshot(sets)
			f.Learned = func(set string, key []byte) bool {
				a, _ := netip.AddrFromSlice(key)
				_, ok := learnedHit(entries, at, set, a)
				return ok
			}
		}
	}
	e := x.ExplainSticky(f, d.addrType, d.pub.stickyLookup())
	for _, s := range sets {
		if e.Policy == "" || s.Policy != e.Policy || s.Family != inet.Of(f.Dst) {
			continue
		}
		if h, ok := learnedHit(entries, at, s.Name, f.Dst); ok {
			e.Learned = &core.LearnedHit{Name: h.Name, Left: core.Seconds(h.Left.Round(time.Second).Seconds())}
			e.Why += fmt.Sprintf("; %s was learned from the DNS answer for %s (steers new connections for %s more)",
				f.Dst, h.Name, h.Left.Round(time.Second))
		}
	}
	return e, nil
}

// addrType is the kernel's type of an address for explain, asked when
// explain is, in the daemon's namespace: the router's addresses on every
// interface, not only the uplinks' the daemon follows, and each subnet's
// broadcast, as the table's `fib daddr type` returns see them at that
// moment (a list published by the loop would lag behind an address just
// added). It costs one route lookup (22 us) per explain that reaches the
// returns, and the bus lets a user ask 10 a second. A failed lookup is
// logged and the address's own type stands.
func (d *Daemon) addrType(a netip.Addr) core.AddrType {
	t, err := rtnl.AddrType(a)
	if err != nil {
		d.log.Warn("explain: the address type is not known", "err", err)
		return core.AddrTypeOf(a)
	}
	return t
}

// Reload re-reads the configuration; a bad file is returned as the error
// and changes nothing.
func (d *Daemon) Reload(ctx context.Context) error {
	l := d.load() // in the caller's goroutine, not the loop's
	var rerr error
	if err := d.do(ctx, func() { rerr = d.reload(l) }); err != nil {
		return err
	}
	return rerr
}

// Event takes a hook's news. PPP: "up" with the local and peer addresses
// and the DNS servers, or "down"; netlink reports the link a moment
// later, the hook makes the reaction faster and tells the peer. DHCP:
// "lease" or "lease-lost" for one family: the lease file the CLI wrote
// is read again (a file, so that a lease reaches a daemon that starts
// later too).
func (d *Daemon) Event(ctx context.Context, kind, iface string, ea bus.EventArgs) error {
	switch kind {
	case "up", "down":
		return d.doStep(ctx, core.PPPEvent{Up: kind == "up", Iface: iface, Local: ea.Local, Peer: ea.Peer, DNS: ea.DNS})
	case "lease", "lease-lost":
		k := core.LeaseKey{Interface: iface, Family: ea.Family}
		l, err := lease.Read(d.opts.RuntimeDir, k)
		if err != nil {
			return fmt.Errorf("reading the lease of %s: %w", iface, err)
		}
		if kind == "lease" && l == nil {
			return fmt.Errorf("no lease file for %s %v in %s", iface, ea.Family, lease.Dir(d.opts.RuntimeDir))
		}
		if kind == "lease-lost" {
			l = nil
		}
		return d.doStep(ctx, core.LeaseEvent{Key: k, Lease: l})
	}
	return fmt.Errorf("event %q: want up, down, lease or lease-lost", kind)
}

// SetService takes an uplink out of service (inService false: it carries
// no new connections and its pinned ones are flushed, as if it had failed)
// or puts it back, for maintenance. It lasts until the daemon restarts.
func (d *Daemon) SetService(ctx context.Context, uplink string, inService bool) error {
	return d.doStep(ctx, core.SetService{Uplink: uplink, InService: inService})
}

// Quota resets an uplink's quota count to zero (reset) or sets its
// limit (limit bytes) until the next reload, restart or period.
func (d *Daemon) Quota(ctx context.Context, uplink string, reset bool, limit uint64) error {
	return d.doStep(ctx, core.QuotaCommand{Uplink: uplink, Reset: reset, Limit: limit})
}

// Exec makes a fresh cgroup under ExecRoot, named by the daemon, moves
// the calling process (pid, `wanpin exec`, which then becomes the
// command) into it, pins the new connections of its processes to one
// uplink, and returns its path. Only cgroups the daemon made itself are
// ever pinned: a name of another's choosing could be no valid policy
// name (and break every apply), an existing cgroup (/wanpin-exec/. is
// its parent) would pin processes nobody asked for. The cgroup holds
// its process before it is pinned, so an empty one is an ended one: the
// entry goes, and the cgroup, when the last process has left.
func (d *Daemon) Exec(ctx context.Context, uplink string, pid uint32) (string, error) {
	var path string
	var serr error
	err := d.do(ctx, func() {
		// Refused before anything is made: a cgroup made for a refused
		// exec, with the caller moved into it, could not be removed
		// (the caller is in it) and, unknown to the state, would never
		// be reaped.
		if serr = d.state.CheckExec(uplink); serr != nil {
			return
		}
		from, err := processCgroup(pid)
		if err != nil {
			serr = err
			return
		}
		path, serr = d.makeExecCgroup()
		if serr != nil {
			return
		}
		dir := filepath.Join(d.cgroups.Root, path)
		defer func() {
			if serr != nil {
				// A cgroup holding a process cannot be removed: the
				// caller goes back where it came from first.
				_ = os.WriteFile(filepath.Join(d.cgroups.Root, from, "cgroup.procs"), []byte(strconv.FormatUint(uint64(pid), 10)), 0o644)
				_ = os.Remove(dir)
			}
		}()
		if serr = os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.FormatUint(uint64(pid), 10)), 0o644); serr != nil {
			serr = fmt.Errorf("moving process %d into %s: %w", pid, path, serr)
			return
		}
		m, err := d.cgroups.Resolve(path)
		if err != nil || len(m) == 0 {
			serr = fmt.Errorf("cgroup %s: not found after making it (%v)", path, err)
			return
		}
		serr = d.step(core.ExecStarted{Path: path, Uplink: uplink, Cgroup: m[0]})
	})
	if err != nil {
		return "", err
	}
	return path, serr
}

// processCgroup is the cgroup v2 path of process pid
// (/proc/PID/cgroup's "0::" line).
func processCgroup(pid uint32) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("reading the cgroup of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("process %d: no cgroup v2 path in /proc/%d/cgroup", pid, pid)
}

// makeExecCgroup creates ExecRoot/<n> with the next free n: Mkdir fails
// on an existing directory, so the cgroup is new and empty.
func (d *Daemon) makeExecCgroup() (string, error) {
	if d.cgroups.Root == "" {
		return "", errors.New("no cgroup v2 hierarchy")
	}
	if err := os.MkdirAll(filepath.Join(d.cgroups.Root, core.ExecRoot), 0o755); err != nil {
		return "", fmt.Errorf("making %s: %w", core.ExecRoot, err)
	}
	for range 1000 {
		d.execSeq++
		path := fmt.Sprintf("%s/%d", core.ExecRoot, d.execSeq)
		err := os.Mkdir(filepath.Join(d.cgroups.Root, path), 0o755)
		if err == nil {
			if err := core.CheckExecPath(path); err != nil {
				return "", err
			}
			return path, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("making cgroup %s: %w", path, err)
		}
	}
	return "", errors.New("no free exec cgroup name")
}

// removeExecCgroups removes, at a stop, the exec cgroups whose processes
// have ended: the reaper runs every few seconds, and a stop in between
// left them for good, since a later daemon never touches a cgroup it did
// not make itself. One whose command still runs cannot be removed and
// stays (unpinned: the table is gone); the kernel removes nothing itself.
func (d *Daemon) removeExecCgroups() {
	if d.cgroups == nil || d.cgroups.Root == "" {
		return
	}
	for path := range d.state.Execs {
		_ = os.Remove(filepath.Join(d.cgroups.Root, path))
	}
	_ = os.Remove(filepath.Join(d.cgroups.Root, core.ExecRoot)) // once empty
}

// reapExecs forgets the exec cgroups whose processes have all ended and
// removes their directories.
func (d *Daemon) reapExecs() {
	for path := range d.state.Execs {
		dir := filepath.Join(d.cgroups.Root, path)
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err == nil && len(strings.TrimSpace(string(procs))) > 0 {
			continue
		}
		_ = os.Remove(dir)
		_ = os.Remove(filepath.Dir(dir)) // /wanpin-exec itself, once empty
		d.step(core.ExecEnded{Path: path})
	}
}
