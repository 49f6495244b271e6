package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/plan"
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

// doErr runs f on the loop and returns its error, or the loop's.
func (d *Daemon) doErr(ctx context.Context, f func() error) error {
	var ferr error
	if err := d.do(ctx, func() { ferr = f() }); err != nil {
		return err
	}
	return ferr
}

// checkUplink says whether the configuration has an uplink of that name.
func (d *Daemon) checkUplink(name string) error {
	for _, u := range d.cfg.Uplinks {
		if u.Name == name {
			return nil
		}
	}
	return fmt.Errorf("no uplink named %q", name)
}

// Report is the daemon's state as `wanpin status` shows it.
type Report struct {
	Config  string
	Uplinks []UplinkReport
}

// UplinkReport is one uplink in a Report.
type UplinkReport struct {
	Name, Interface string
	Up              bool
	Reason          string
	Since           time.Time
	Addresses       []netip.Addr
	Gateway4        netip.Addr
	Gateway6        netip.Addr
	Weight, Tier    int
	Mark            uint32
	Pinned          int     // conntrack entries carrying the uplink's mark
	RTT             float64 // latest probe round trip, seconds; 0: not probed or no answer
	Loss            float64 // probe loss over the window, 0..1; -1: not probed
	V4, V6          FamilyReport
}

// FamilyReport is one address family of an uplink in a Report.
type FamilyReport struct {
	Up        bool
	Reason    string
	Since     time.Time
	Addresses []netip.Addr
	Gateway   netip.Addr
	RTT       float64 // seconds; 0: not probed or no answer
	Loss      float64 // 0..1; -1: not probed
}

// Status reports every uplink. The conntrack count runs outside the loop:
// dumping a large table must not delay reactions to events.
func (d *Daemon) Status(ctx context.Context) (Report, error) {
	var r Report
	var mask uint32
	err := d.do(ctx, func() {
		r.Config = d.opts.ConfigPath
		mask = d.cfg.MarkMask
		for i, u := range d.cfg.Uplinks {
			ur := UplinkReport{Name: u.Name, Interface: u.Interface, Weight: u.Weight, Tier: u.Tier, Mark: d.cfg.UplinkMark(i)}
			if s, ok := d.status[u.Name]; ok {
				ur.Up, ur.Reason, ur.Since = s.Up, s.Reason, s.Since
				ur.Addresses = append(append(ur.Addresses, s.State.V4.Addrs...), s.State.V6.Addrs...)
				ur.Gateway4, ur.Gateway6 = s.State.V4.Gateway, s.State.V6.Gateway
				for _, f := range []struct {
					v6 bool
					to *FamilyReport
				}{{false, &ur.V4}, {true, &ur.V6}} {
					fs, st := s.Family(f.v6), s.State.Family(f.v6)
					*f.to = FamilyReport{Up: fs.Up, Reason: fs.Reason, Since: fs.Since, Addresses: st.Addrs, Gateway: st.Gateway}
				}
			}
			ur.V4.RTT, ur.V4.Loss = d.healthStats(u.Name, false)
			ur.V6.RTT, ur.V6.Loss = d.healthStats(u.Name, true)
			// The uplink's own figures: its IPv4 probes', else its IPv6 ones'.
			ur.RTT, ur.Loss = ur.V4.RTT, ur.V4.Loss
			if ur.Loss < 0 {
				ur.RTT, ur.Loss = ur.V6.RTT, ur.V6.Loss
			}
			r.Uplinks = append(r.Uplinks, ur)
		}
	})
	if err != nil {
		return r, err
	}
	if d.counter != nil {
		counts, err := d.counter.CountByMark(mask)
		if err != nil {
			d.log.Warn("counting pinned connections", "err", err)
		}
		for i := range r.Uplinks {
			r.Uplinks[i].Pinned = counts[r.Uplinks[i].Mark]
		}
	}
	return r, nil
}

// Reload re-reads the configuration; a bad file is returned as the error
// and changes nothing.
func (d *Daemon) Reload(ctx context.Context) error {
	return d.doErr(ctx, d.reload)
}

// Event takes a PPP hook's news: "up" with the local and peer addresses,
// or "down". Netlink reports the same a moment later; the hook makes the
// reaction faster and tells the peer address.
func (d *Daemon) Event(ctx context.Context, kind, iface string, local, peer netip.Addr) error {
	if kind != "up" && kind != "down" {
		return fmt.Errorf("event %q: want up or down", kind)
	}
	return d.doErr(ctx, func() error {
		known := false
		for _, u := range d.cfg.Uplinks {
			known = known || u.Interface == iface
		}
		if !known {
			return fmt.Errorf("event %s %s: no uplink uses interface %s", kind, iface, iface)
		}
		d.log.Info("ppp event", "kind", kind, "interface", iface, "local", addrOrEmpty(local), "peer", addrOrEmpty(peer))
		if kind == "up" {
			d.hints[iface] = Hint{Peer: peer}
		} else {
			d.hints[iface] = Hint{Down: true}
		}
		d.sync("ppp ip-" + kind)
		return nil
	})
}

func addrOrEmpty(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// usedAddrs returns the addresses of every uplink, for noticing changes.
func usedAddrs(cfg *config.Config, status map[string]*UplinkStatus) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for _, u := range cfg.Uplinks {
		if s, ok := status[u.Name]; ok {
			a := append(append([]netip.Addr(nil), s.State.V4.Addrs...), s.State.V6.Addrs...)
			sort.Slice(a, func(i, j int) bool { return a[i].Less(a[j]) })
			out[u.Name] = a
		}
	}
	return out
}

// SetService takes an uplink out of service (inService false: it carries
// no new connections and its pinned ones are flushed, as if it had failed)
// or puts it back, for maintenance. It lasts until the daemon restarts.
func (d *Daemon) SetService(ctx context.Context, uplink string, inService bool) error {
	return d.doErr(ctx, func() error {
		if err := d.checkUplink(uplink); err != nil {
			return err
		}
		if inService {
			delete(d.maintenance, uplink)
		} else {
			d.maintenance[uplink] = true
		}
		d.log.Info("maintenance", "uplink", uplink, "in_service", inService)
		d.sync("admin")
		return nil
	})
}

// execEntry is one running `wanpin exec`.
type execEntry struct {
	uplink string
	path   string // cgroup path relative to the cgroup2 root
}

// Exec pins the new connections of the processes in cgroup path (made by
// `wanpin exec`, which then runs the command in it) to one uplink. The
// entry goes when the cgroup is empty.
func (d *Daemon) Exec(ctx context.Context, uplink, path string) error {
	return d.doErr(ctx, func() error {
		if err := d.checkUplink(uplink); err != nil {
			return err
		}
		if !strings.HasPrefix(path, "/wanpin-exec/") || strings.Contains(path, "..") {
			return fmt.Errorf("cgroup %q is not one of wanpin exec's", path)
		}
		m, err := d.cgroups.Resolve(path)
		if err != nil || len(m) == 0 {
			return fmt.Errorf("cgroup %s: not found (%v)", path, err)
		}
		d.execs[path] = execEntry{uplink: uplink, path: path}
		d.execMatch[path] = m[0]
		d.log.Info("exec pinned", "cgroup", path, "uplink", uplink)
		d.sync("exec")
		return nil
	})
}

// reapExecs forgets the exec cgroups whose processes have all ended and
// removes their directories. It reports whether anything went.
func (d *Daemon) reapExecs() bool {
	changed := false
	for path := range d.execs {
		dir := filepath.Join(d.cgroups.Root, path)
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err == nil && len(strings.TrimSpace(string(procs))) > 0 {
			continue
		}
		_ = os.Remove(dir)
		_ = os.Remove(filepath.Dir(dir)) // /wanpin-exec itself, once empty
		delete(d.execs, path)
		delete(d.execMatch, path)
		d.log.Info("exec ended", "cgroup", path)
		changed = true
	}
	return changed
}

// execList is the plan's view of the running execs, in a stable order.
func (d *Daemon) execList() []plan.Exec {
	var out []plan.Exec
	for path, e := range d.execs {
		out = append(out, plan.Exec{Name: "exec_" + filepath.Base(path), Uplink: e.uplink, Cgroup: d.execMatch[path]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
