package daemon

import (
	"testing"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/watch"
)

// Step by step: counts since the first reading, kept across a PPP link's
// redial (new ifindex, counters from zero) and a spell without the
// interface; an interface first seen later counts from its creation.
func TestTrafficMeter(t *testing.T) {
	var m trafficMeter
	c := func(index int, rx, tx uint64) watch.IfaceCounters {
		return watch.IfaceCounters{Index: index, RxBytes: rx, RxPackets: rx / 100, TxBytes: tx, TxPackets: tx / 100}
	}
	tr := func(rx, tx uint64) core.Traffic {
		return core.Traffic{InBytes: rx, InPackets: rx / 100, OutBytes: tx, OutPackets: tx / 100}
	}
	steps := []struct {
		what string
		now  map[string]watch.IfaceCounters
		want map[string]core.Traffic
	}{
		{"first reading: what came before wanpin is not counted",
			map[string]watch.IfaceCounters{"isp1": c(5, 10000, 2000)},
			map[string]core.Traffic{"isp1": tr(0, 0)}},
		{"traffic",
			map[string]watch.IfaceCounters{"isp1": c(5, 10500, 2300)},
			map[string]core.Traffic{"isp1": tr(500, 300)}},
		{"ppp0 gone: the total stays",
			map[string]watch.IfaceCounters{},
			map[string]core.Traffic{"isp1": tr(500, 300)}},
		{"redialled: a new ifindex counting from zero",
			map[string]watch.IfaceCounters{"isp1": c(9, 100, 200)},
			map[string]core.Traffic{"isp1": tr(600, 500)}},
		{"an uplink whose interface appears after the start counts from its creation",
			map[string]watch.IfaceCounters{"isp1": c(9, 400, 200), "isp2": c(12, 300, 100)},
			map[string]core.Traffic{"isp1": tr(900, 500), "isp2": tr(300, 100)}},
		{"counters reset on the same ifindex",
			map[string]watch.IfaceCounters{"isp1": c(9, 100, 0), "isp2": c(12, 300, 100)},
			map[string]core.Traffic{"isp1": tr(1000, 500), "isp2": tr(300, 100)}},
	}
	for _, s := range steps {
		got := m.update(s.now)
		if len(got) != len(s.want) {
			t.Fatalf("%s: %v, want %v", s.what, got, s.want)
		}
		for k, w := range s.want {
			if got[k] != w {
				t.Errorf("%s: %s = %+v, want %+v", s.what, k, got[k], w)
			}
		}
	}
}
