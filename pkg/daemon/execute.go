package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/flush"
	"github.com/wanpin/wanpin/pkg/health"
	"github.com/wanpin/wanpin/pkg/quota"
	"github.com/wanpin/wanpin/pkg/watch"
)

// execute carries out effects in the order the machine gave them. When
// an apply fails, the applies after it in the batch are skipped (the
// kernel keeps what it had; a retry applies everything) and the error is
// returned; every other effect still happens.
func (d *Daemon) execute(effects []core.Effect) error {
	var applyErr error
	applied := false
	for _, e := range effects {
		switch e := e.(type) {
		case core.Log:
			d.log.Log(context.Background(), e.Level, e.Msg, e.Attrs...)
		case core.SetSysctl:
			d.sysctl(e.Key, e.Value)
		case core.LoosenRPFilter:
			d.loosenRPFilter(e.Interface)
		case core.ApplyRouting:
			applied = true
			if applyErr != nil {
				continue
			}
			res, err := d.routing.Apply(e.Routing)
			if err != nil {
				applyErr = fmt.Errorf("applying routing: %w", err)
				continue
			}
			conflicts := []core.RouteConflict{}
			for _, c := range res.Conflicts {
				conflicts = append(conflicts, core.RouteConflict{Route: c.Route, Foreign: c.Foreign})
			}
			d.routeConflicts = conflicts
			if res.Changed() {
				d.log.Info("routing applied", "rules_added", res.RulesAdded, "rules_deleted", res.RulesDeleted,
					"routes_added", res.RoutesAdded, "routes_deleted", res.RoutesDeleted)
			}
		case core.ApplyNFT:
			applied = true
			if applyErr != nil {
				continue
			}
			if err := d.nft.Apply(e.NFT); err != nil {
				applyErr = fmt.Errorf("applying nftables: %w", err)
				continue
			}
			up := 0
			for _, u := range d.state.Uplinks {
				if u.Up {
					up++
				}
			}
			d.log.Info("nftables applied", "table", e.NFT.Table, "uplinks_up", up, "policies", len(e.NFT.Policies))
			if d.domains != nil {
				d.domains.sync(e.NFT, d.state.Config)
			}
		case core.ApplyMPTCP:
			d.applyMPTCP(e)
		case core.Repin:
			if applyErr != nil {
				// The kernel kept the old table, and the entries its
				// marks: the machine asks again with the next apply.
				continue
			}
			d.repin(e)
		case core.FlushMark:
			d.flushMark(e)
		case core.FlushAddr:
			d.flushAddr(e)
		case core.Failback:
			d.failback(e)
		case core.SaveQuota:
			d.saveQuota(e)
		case core.RunHooks:
			d.hooks.transition(e.Uplink, e.Interface, e.State, e.Reason)
		case core.Notify:
			if err := d.notify.send(e.State); err != nil {
				d.log.Warn("notifying systemd", "state", e.State, "err", err)
			}
		case core.StartProbes:
			d.startMonitor(e.Spec)
		case core.StopProbes:
			d.stopMonitor(e.Key)
		case core.RetryAfter:
			d.retry.Reset(e.After)
		case core.ObserveAfter:
			d.observe.Reset(e.After)
		case core.Teardown:
			d.teardown()
		default:
			panic(fmt.Sprintf("daemon: unknown effect %T", e))
		}
	}
	if applied {
		d.applies++
		if applyErr != nil {
			d.applyErrors++
		}
	}
	return applyErr
}

func (d *Daemon) flushMark(e core.FlushMark) {
	if d.flusher == nil {
		return
	}
	n, err := d.flusher.FlushMark(e.Mark, e.Mask, e.Family)
	if err != nil {
		d.log.Error("flushing conntrack entries", "uplink", e.Uplink, "family", e.Family.String(), "err", err)
		return
	}
	d.flushed[e.Uplink] += uint64(n)
	d.log.Info("conntrack flushed", "uplink", e.Uplink, "family", e.Family.String(), "mark", fmt.Sprintf("%#x", e.Mark),
		"entries", n, "reason", e.Reason)
}

// repin moves the connections pinned by the previous configuration to
// the marks of the one just applied, and logs a line per uplink.
func (d *Daemon) repin(e core.Repin) {
	if d.flusher == nil {
		return
	}
	moves := make([]flush.Move, len(e.Moves))
	for i, m := range e.Moves {
		moves[i] = flush.Move{Old: m.Old, New: m.New, Delete: m.New == 0}
	}
	n, err := d.flusher.Repin(e.OldMask, e.NewMask, moves)
	for i, m := range e.Moves {
		if m.New == 0 {
			d.log.Info("conntrack flushed", "uplink", m.Uplink, "mark", fmt.Sprintf("%#x/%#x", m.Old, e.OldMask),
				"entries", n[i], "reason", "uplink removed by the reload")
			continue
		}
		d.log.Info("conntrack re-marked", "uplink", m.Uplink, "from", fmt.Sprintf("%#x/%#x", m.Old, e.OldMask),
			"to", fmt.Sprintf("%#x/%#x", m.New, e.NewMask), "entries", n[i], "reason", "the reload changed the uplink's mark")
	}
	if err != nil {
		d.log.Error("moving connections to the reloaded marks", "err", err)
	}
}

func (d *Daemon) failback(e core.Failback) {
	if d.flusher == nil {
		return
	}
	reset, deleted, err := d.flusher.Evict(e.Mark, e.Mask, e.Evict, e.Family)
	if err != nil {
		d.log.Error("failback", "uplink", e.Uplink, "to", e.To, "family", e.Family.String(), "err", err)
	}
	d.failedBack[e.Uplink] += uint64(reset + deleted)
	d.log.Info("failback: connections moved", "uplink", e.Uplink, "to", e.To, "family", e.Family.String(),
		"tcp_reset", reset, "flushed", deleted, "reason", e.Reason)
}

// saveQuota writes the quotas' counts (pkg/quota.Save: a whole file or
// the old one, whatever happens meanwhile). A failure is logged; the
// counting goes on, and the next save tries again.
func (d *Daemon) saveQuota(e core.SaveQuota) {
	start := time.Now()
	if err := quota.Save(d.opts.StateDir, e.Usage, start); err != nil {
		d.log.Error("saving the quota counts", "dir", d.opts.StateDir, "err", err)
		return
	}
	d.log.Debug("quota counts saved", "file", filepath.Join(d.opts.StateDir, quota.FileName), "took", time.Since(start))
}

func (d *Daemon) flushAddr(e core.FlushAddr) {
	if d.flusher == nil {
		return
	}
	n, err := d.flusher.FlushNATAddr(e.Addr)
	if err != nil {
		d.log.Error("flushing conntrack entries", "uplink", e.Uplink, "address", e.Addr, "err", err)
		return
	}
	d.flushed[e.Uplink] += uint64(n)
	d.log.Info("conntrack flushed", "uplink", e.Uplink, "address", e.Addr.String(), "entries", n, "reason", "address gone")
}

// startMonitor starts one family's probes. They run in the daemon's
// network namespace: their sockets carry the uplink's mark and are bound
// to its interface.
func (d *Daemon) startMonitor(s core.ProbeSpec) {
	if m := d.monitors[s.Key]; m != nil {
		m.Stop()
	}
	d.monitors[s.Key] = health.Start(d.runCtx, health.Spec{Uplink: s.Uplink, Interface: s.Interface, Mark: s.Mark,
		Family: s.Family, Config: s.Config}, d.verdicts, d.log)
	d.pub.setMonitors(d.monitors)
}

func (d *Daemon) stopMonitor(k core.Key) {
	if m := d.monitors[k]; m != nil {
		m.Stop()
		delete(d.monitors, k)
	}
	d.pub.setMonitors(d.monitors)
}

func (d *Daemon) stopMonitors() {
	for k := range d.monitors {
		d.stopMonitor(k)
	}
}

// teardown removes everything wanpin installed (SIGTERM): the router falls
// back to plain routing by the main table.
func (d *Daemon) teardown() {
	var errs []error
	d.saveMemory()
	if err := d.nft.Remove(); err != nil {
		errs = append(errs, fmt.Errorf("removing the nftables table: %w", err))
	}
	res, err := d.routing.Remove()
	if err != nil {
		errs = append(errs, fmt.Errorf("removing rules and routes: %w", err))
	}
	if err := d.removeMPTCP(); err != nil {
		errs = append(errs, err)
	}
	d.restoreRPFilters()
	d.removeExecCgroups()
	d.log.Info("stopped, state removed", "rules_deleted", res.RulesDeleted, "routes_deleted", res.RoutesDeleted)
	if len(errs) > 0 {
		d.teardownErr = fmt.Errorf("%v", errs)
	}
}

// rpFilter reads the reverse-path filter of iface and "all": the kernel
// applies the larger.
func (d *Daemon) rpFilter(iface string) (own, effective string, err error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(d.opts.ProcSys, "net/ipv4/conf", name, "rp_filter"))
		return strings.TrimSpace(string(b)), err
	}
	all, err := read("all")
	if err != nil {
		return "", "", err
	}
	if own, err = read(iface); err != nil {
		return "", "", err
	}
	return own, max(all, own), nil // "0" < "1" < "2"
}

// loosenRPFilter makes iface's reverse-path filter loose where it is
// strict in effect (see core.LoosenRPFilter), and remembers the value to
// put back at stop.
func (d *Daemon) loosenRPFilter(iface string) {
	own, eff, err := d.rpFilter(iface)
	if err != nil {
		d.log.Warn("reading rp_filter", "interface", iface, "err", err)
		return
	}
	if eff != "1" {
		return
	}
	if d.sysctl("net/ipv4/conf/"+iface+"/rp_filter", "2") {
		if _, kept := d.loosened[iface]; !kept {
			d.loosened[iface] = own
		}
	}
}

// restoreRPFilters puts back the reverse-path filters wanpin loosened,
// where they are still as it left them.
func (d *Daemon) restoreRPFilters() {
	for iface, was := range d.loosened {
		if own, _, err := d.rpFilter(iface); err == nil && own == "2" && was != "2" {
			d.sysctl("net/ipv4/conf/"+iface+"/rp_filter", was)
		}
	}
}

// sysctl writes one value when it differs.
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

// refreshTraffic reads the uplinks' interface counters for status and
// metrics, on the loop's own cadence (never per request).
func (d *Daemon) refreshTraffic() {
	if d.obs == nil {
		return
	}
	byIface := map[string]string{}
	var names []string
	for _, u := range d.state.Config.Uplinks {
		byIface[u.Interface] = u.Name
		names = append(names, u.Interface)
	}
	cur, err := d.obs.Counters(names)
	if err != nil {
		d.log.Warn("reading traffic counters", "err", err)
		return
	}
	now := make(map[string]watch.IfaceCounters, len(cur))
	for iface, c := range cur {
		now[byIface[iface]] = c
	}
	d.traffic = d.meter.update(now)
}
