package daemon

import (
	"reflect"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/health"
)

// famKey names one address family of one uplink: health is probed and
// judged per family (see health.ByFamily).
type famKey struct {
	uplink string
	v6     bool
}

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// wantMonitors is one probe spec per uplink and family that has health
// targets of that family.
func (d *Daemon) wantMonitors() map[famKey]health.Spec {
	want := map[famKey]health.Spec{}
	for i, u := range d.cfg.Uplinks {
		if u.Health == nil {
			continue
		}
		v4, v6 := health.ByFamily(*u.Health)
		for fam, hc := range map[bool]*config.HealthConfig{false: v4, true: v6} {
			if hc != nil {
				want[famKey{u.Name, fam}] = health.Spec{Uplink: u.Name, Interface: u.Interface,
					Mark: d.cfg.UplinkMark(i), V6: fam, Config: *hc}
			}
		}
	}
	return want
}

// startMonitors starts the probe monitors. They run in the daemon's
// network namespace: their sockets carry the uplink's mark and are bound
// to its interface.
func (d *Daemon) startMonitors() { d.restartMonitors() }

func (d *Daemon) stopMonitors() {
	for k, m := range d.monitors {
		m.Stop()
		delete(d.monitors, k)
	}
}

// restartMonitors applies a new configuration to the probes: monitors
// whose spec is unchanged keep running (and their verdict stands); the
// others are stopped, restarted, and their verdict forgotten.
func (d *Daemon) restartMonitors() {
	want := d.wantMonitors()
	for k, m := range d.monitors {
		if spec, ok := want[k]; ok && reflect.DeepEqual(spec, d.specs[k]) {
			delete(want, k)
			continue
		}
		m.Stop()
		delete(d.monitors, k)
		delete(d.specs, k)
		delete(d.verdicts, k)
	}
	for k, spec := range want {
		d.monitors[k] = health.Start(d.runCtx, spec, d.healthEvents, d.log)
		d.specs[k] = spec
		d.log.Info("health probes started", "uplink", k.uplink, "family", famName(k.v6), "method", spec.Config.Method,
			"targets", len(spec.Config.Targets), "interval", spec.Config.Interval.String())
	}
	for k := range d.verdicts {
		if _, ok := d.monitors[k]; !ok {
			delete(d.verdicts, k)
		}
	}
}

// healthStats returns the latest probe figures of one family of an uplink
// (rtt 0 and loss -1 when it is not probed).
func (d *Daemon) healthStats(name string, v6 bool) (rttSeconds float64, loss float64) {
	m, ok := d.monitors[famKey{name, v6}]
	if !ok {
		return 0, -1
	}
	rtt, l := m.Stats()
	return rtt.Seconds(), l
}
