package daemon

import (
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/watch"
)

// trafficMeter turns the uplinks' interface counters into totals since
// the daemon started. An interface's counters start from zero whenever
// it is created (a PPP link redialled, a USB modem replugged) and count
// from its creation, not from wanpin's start: what an earlier incarnation
// counted is kept, and what an interface present at the first reading had
// counted before it is left out.
type trafficMeter struct {
	started bool
	uplinks map[string]*meterUplink
}

type meterUplink struct {
	index      int
	base, last core.Traffic // the incarnation's counters when first seen, and now
	done       core.Traffic // what earlier incarnations counted
}

func countersTraffic(c watch.IfaceCounters) core.Traffic {
	return core.Traffic{InBytes: c.RxBytes, InPackets: c.RxPackets, OutBytes: c.TxBytes, OutPackets: c.TxPackets}
}

func sub(a, b core.Traffic) core.Traffic {
	return core.Traffic{InBytes: a.InBytes - b.InBytes, InPackets: a.InPackets - b.InPackets,
		OutBytes: a.OutBytes - b.OutBytes, OutPackets: a.OutPackets - b.OutPackets}
}

func below(a, b core.Traffic) bool {
	return a.InBytes < b.InBytes || a.InPackets < b.InPackets || a.OutBytes < b.OutBytes || a.OutPackets < b.OutPackets
}

// update takes one reading, by uplink (an uplink whose interface does not
// exist is missing), and returns the totals of every uplink it has seen.
func (m *trafficMeter) update(now map[string]watch.IfaceCounters) map[string]core.Traffic {
	if m.uplinks == nil {
		m.uplinks = map[string]*meterUplink{}
	}
	for name, c := range now {
		cur := countersTraffic(c)
		u, seen := m.uplinks[name]
		switch {
		case !seen:
			u = &meterUplink{index: c.Index, last: cur}
			if !m.started {
				u.base = cur
			}
			m.uplinks[name] = u
		case u.index != c.Index || below(cur, u.last):
			// Another incarnation (or counters reset by the driver).
			u.done = u.done.Add(sub(u.last, u.base))
			u.index, u.base, u.last = c.Index, core.Traffic{}, cur
		default:
			u.last = cur
		}
	}
	m.started = true
	out := make(map[string]core.Traffic, len(m.uplinks))
	for name, u := range m.uplinks {
		out[name] = u.done.Add(sub(u.last, u.base))
	}
	return out
}
