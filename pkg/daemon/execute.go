package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/health"
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
			if res.Changed() {
				d.log.Info("routing applied", "rules_added", res.RulesAdded, "rules_deleted", res.RulesDeleted,
					"routes_added", res.RoutesAdded, "routes_deleted", res.RoutesDeleted)
			}
		case core.ApplyNFT:
			applied = true
			if applyErr != nil {
				continue
			}
			d.saveTraffic()
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
		case core.FlushMark:
			d.flushMark(e)
		case core.FlushAddr:
			d.flushAddr(e)
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
		"entries", n, "reason", "uplink down")
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
	if err := d.nft.Remove(); err != nil {
		errs = append(errs, fmt.Errorf("removing the nftables table: %w", err))
	}
	res, err := d.routing.Remove()
	if err != nil {
		errs = append(errs, fmt.Errorf("removing rules and routes: %w", err))
	}
	d.log.Info("stopped, state removed", "rules_deleted", res.RulesDeleted, "routes_deleted", res.RoutesDeleted)
	if len(errs) > 0 {
		d.teardownErr = fmt.Errorf("%v", errs)
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

// saveTraffic adds what the table's counters hold to the running totals,
// before an apply replaces the table (and zeroes them).
func (d *Daemon) saveTraffic() {
	cur, err := d.nft.Counters()
	if err != nil {
		d.log.Warn("reading traffic counters", "err", err)
		return
	}
	for name, t := range cur {
		d.saved[name] = d.saved[name].Add(trafficOf(t))
	}
}

// refreshTraffic reads the counters for status and metrics, on the loop's
// own cadence (never per request).
func (d *Daemon) refreshTraffic() {
	cur, err := d.nft.Counters()
	if err != nil {
		d.log.Warn("reading traffic counters", "err", err)
		return
	}
	d.traffic = map[string]core.Traffic{}
	for _, u := range d.state.Config.Uplinks {
		d.traffic[u.Name] = d.saved[u.Name].Add(trafficOf(cur[u.Name]))
	}
}
