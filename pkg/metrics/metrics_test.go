package metrics

import (
	"bytes"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/core"
)

func TestWrite(t *testing.T) {
	s := core.Status{Applies: 7, ApplyErrors: 1, Uplinks: []core.UplinkReport{{
		Name: "dsl", Interface: `pp\p0`, State: "up", Transitions: 3, Pinned: 12, Flushed: 40,
		Traffic: core.Traffic{InBytes: 1000, OutBytes: 200, InPackets: 10, OutPackets: 4},
		IPv4:    core.FamilyReport{State: "up", RTTms: 12.5, Loss: 0.1},
		IPv6:    core.FamilyReport{State: "down", Loss: -1},
	}}}
	var b bytes.Buffer
	Write(&b, s)
	out := b.String()
	for _, want := range []string{
		"# TYPE wanpin_uplink_up gauge\n",
		`wanpin_uplink_up{interface="pp\\p0",uplink="dsl"} 1` + "\n",
		"# TYPE wanpin_uplink_transitions_total counter\n",
		`wanpin_uplink_transitions_total{interface="pp\\p0",uplink="dsl"} 3` + "\n",
		`wanpin_uplink_pinned_connections{interface="pp\\p0",uplink="dsl"} 12` + "\n",
		`wanpin_uplink_conntrack_flushed_total{interface="pp\\p0",uplink="dsl"} 40` + "\n",
		`wanpin_uplink_bytes_total{direction="in",interface="pp\\p0",uplink="dsl"} 1000` + "\n",
		`wanpin_uplink_packets_total{direction="out",interface="pp\\p0",uplink="dsl"} 4` + "\n",
		`wanpin_uplink_family_up{family="ipv4",interface="pp\\p0",uplink="dsl"} 1` + "\n",
		`wanpin_uplink_family_up{family="ipv6",interface="pp\\p0",uplink="dsl"} 0` + "\n",
		`wanpin_uplink_rtt_seconds{family="ipv4",interface="pp\\p0",uplink="dsl"} 0.0125` + "\n",
		`wanpin_uplink_loss_ratio{family="ipv4",interface="pp\\p0",uplink="dsl"} 0.1` + "\n",
		"wanpin_applies_total 7\n", "wanpin_apply_errors_total 1\n",
		"go_goroutines ", "process_resident_memory_bytes ", "process_cpu_seconds_total ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// Not probed, or no answer: no series rather than a false zero.
	if strings.Contains(out, `wanpin_uplink_loss_ratio{family="ipv6"`) || strings.Contains(out, `wanpin_uplink_rtt_seconds{family="ipv6"`) {
		t.Errorf("IPv6 was not probed but has probe series:\n%s", out)
	}
}
