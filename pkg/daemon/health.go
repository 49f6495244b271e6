package daemon

import (
	"reflect"

	"github.com/wanpin/wanpin/pkg/health"
)

// startMonitors starts a probe monitor for every uplink with a health
// table. The monitors run in the daemon's network namespace: their
// sockets carry the uplink's mark and are bound to its interface.
func (d *Daemon) startMonitors() {
	for i, u := range d.cfg.Uplinks {
		if u.Health == nil {
			continue
		}
		spec := health.Spec{Uplink: u.Name, Interface: u.Interface, Mark: d.cfg.UplinkMark(i), Config: *u.Health}
		d.monitors[u.Name] = health.Start(d.runCtx, spec, d.healthEvents, d.log)
		d.specs[u.Name] = spec
		d.log.Info("health probes started", "uplink", u.Name, "method", u.Health.Method,
			"targets", len(u.Health.Targets), "interval", u.Health.Interval.String())
	}
}

func (d *Daemon) stopMonitors() {
	for name, m := range d.monitors {
		m.Stop()
		delete(d.monitors, name)
	}
}

// restartMonitors applies a new configuration to the probes: monitors
// whose spec is unchanged keep running (and their verdict stands); the
// others are stopped, restarted, and their verdict forgotten.
func (d *Daemon) restartMonitors() {
	want := map[string]health.Spec{}
	for i, u := range d.cfg.Uplinks {
		if u.Health != nil {
			want[u.Name] = health.Spec{Uplink: u.Name, Interface: u.Interface, Mark: d.cfg.UplinkMark(i), Config: *u.Health}
		}
	}
	for name, m := range d.monitors {
		if spec, ok := want[name]; ok && reflect.DeepEqual(spec, d.specs[name]) {
			delete(want, name)
			continue
		}
		m.Stop()
		delete(d.monitors, name)
		delete(d.specs, name)
		delete(d.verdicts, name)
	}
	for name, spec := range want {
		d.monitors[name] = health.Start(d.runCtx, spec, d.healthEvents, d.log)
		d.specs[name] = spec
		d.log.Info("health probes started", "uplink", name, "method", spec.Config.Method,
			"targets", len(spec.Config.Targets), "interval", spec.Config.Interval.String())
	}
	for name := range d.verdicts {
		if _, ok := d.monitors[name]; !ok {
			delete(d.verdicts, name)
		}
	}
}

// healthStats returns an uplink's latest probe figures (rtt 0 and loss -1
// when it is not probed).
func (d *Daemon) healthStats(name string) (rttSeconds float64, loss float64) {
	m, ok := d.monitors[name]
	if !ok {
		return 0, -1
	}
	rtt, l := m.Stats()
	return rtt.Seconds(), l
}
