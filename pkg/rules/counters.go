package rules

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Traffic is what one counter saw.
type Traffic struct {
	Packets, Bytes uint64
}

// UplinkTraffic is what went in and out through one uplink's interface.
type UplinkTraffic struct {
	In, Out Traffic
}

// Counters reads the per-uplink counters of the table in the kernel, by
// uplink name. They restart from zero whenever the table is replaced.
func (m *Manager) Counters() (map[string]UplinkTraffic, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return nil, err
	}
	t, err := m.lookup(m.table)
	if err != nil || t == nil {
		return nil, err
	}
	chains, err := m.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	out := map[string]UplinkTraffic{}
	for _, c := range chains {
		if c.Table.Name != m.table {
			continue
		}
		var name string
		var in bool
		switch {
		case strings.HasPrefix(c.Name, "count_in_"):
			name, in = strings.TrimPrefix(c.Name, "count_in_"), true
		case strings.HasPrefix(c.Name, "count_out_"):
			name = strings.TrimPrefix(c.Name, "count_out_")
		default:
			continue
		}
		rules, err := m.conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", c.Name, err)
		}
		var tr Traffic
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					tr.Packets += ctr.Packets
					tr.Bytes += ctr.Bytes
				}
			}
		}
		ut := out[name]
		if in {
			ut.In = tr
		} else {
			ut.Out = tr
		}
		out[name] = ut
	}
	return out, nil
}
