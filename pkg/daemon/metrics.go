package daemon

import (
	"context"
	"time"

	"github.com/wanpin/wanpin/pkg/metrics"
	"github.com/wanpin/wanpin/pkg/rules"
)

// saveTraffic adds what the table's counters hold to the running totals,
// before an apply replaces the table (and zeroes them).
func (d *Daemon) saveTraffic() {
	cur, err := d.nft.Counters()
	if err != nil {
		d.log.Warn("reading traffic counters", "err", err)
		return
	}
	for name, t := range cur {
		d.traffic[name] = addTraffic(d.traffic[name], t)
	}
}

func addTraffic(a, b rules.UplinkTraffic) rules.UplinkTraffic {
	a.In.Bytes += b.In.Bytes
	a.In.Packets += b.In.Packets
	a.Out.Bytes += b.Out.Bytes
	a.Out.Packets += b.Out.Packets
	return a
}

// Metrics gathers the figures the metrics endpoint exports.
func (d *Daemon) Metrics(ctx context.Context) (metrics.Snapshot, error) {
	var s metrics.Snapshot
	var mask uint32
	marks := map[string]uint32{}
	err := d.do(ctx, func() {
		cur, err := d.nft.Counters()
		if err != nil {
			d.log.Warn("reading traffic counters", "err", err)
		}
		mask = d.cfg.MarkMask
		for i, u := range d.cfg.Uplinks {
			t := addTraffic(d.traffic[u.Name], cur[u.Name])
			mu := metrics.Uplink{Name: u.Name, Interface: u.Interface, Transitions: d.transitions[u.Name],
				Flushed: d.flushed[u.Name], InBytes: t.In.Bytes, InPackets: t.In.Packets,
				OutBytes: t.Out.Bytes, OutPackets: t.Out.Packets}
			if st, ok := d.status[u.Name]; ok {
				mu.Up, mu.V4.Up, mu.V6.Up = st.Up, st.V4.Up, st.V6.Up
			}
			for _, f := range []struct {
				v6 bool
				m  *metrics.Family
			}{{false, &mu.V4}, {true, &mu.V6}} {
				rtt, loss := d.healthStats(u.Name, f.v6)
				f.m.RTT, f.m.Loss = time.Duration(rtt*float64(time.Second)), loss
			}
			marks[u.Name] = d.cfg.UplinkMark(i)
			s.Uplinks = append(s.Uplinks, mu)
		}
		s.Applies, s.ApplyErrors = d.applies, d.applyErrors
	})
	if err != nil {
		return s, err
	}
	if d.counter != nil {
		if counts, err := d.counter.CountByMark(mask); err == nil {
			for i := range s.Uplinks {
				s.Uplinks[i].Pinned = counts[marks[s.Uplinks[i].Name]]
			}
		}
	}
	return s, nil
}
