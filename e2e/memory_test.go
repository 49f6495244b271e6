package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/pkg/core"
)

// memorySources: LAN sources of TestMemoryAcrossRestart, each sticking
// to one of two uplinks at 1:1. All eight keeping their uplinks by
// chance, without the memory, is one in 256.
var memorySources = []string{netlab.LANHost4, netlab.LANHostAlt4,
	"192.0.2.30", "192.0.2.31", "192.0.2.32", "192.0.2.33", "192.0.2.34", "192.0.2.35"}

// TestMemoryAcrossRestart: a clean restart (SIGTERM, which removes the
// table, then a new start) keeps what the sticky and learned sets held.
// Each source's new connections stay on the uplink it stuck to, and a
// LAN host that cached a DNS answer still reaches the learned address
// through the domain policy's uplink without asking again; status shows
// the entries with their time left.
func TestMemoryAcrossRestart(t *testing.T) {
	l := newLab(t, 3)
	domainLab(t, l)
	for _, a := range memorySources[2:] {
		run(t, l, l.LAN, "ip", "addr", "add", a+"/26", "dev", "eth0")
	}
	d := startWanpin(t, l, `sticky = "10m"
domain_ttl_floor = "10m"

[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"

[[uplink]]
name = "isp3"
interface = "wan3"
tier = 2

[[policy]]
name = "stream"
domains = ["stream.example"]
uplinks = ["isp3"]
`)
	names := []string{"d1.stream.example", "d2.stream.example", "d3.stream.example"}
	waitUntil(t, 10*time.Second, "the learner holding answers", func() (bool, string) {
		out, _ := l.Exec(l.Router, "nft", "list", "set", "inet", "wanpin", "dns_alive")
		return strings.Contains(out, "udp"), out
	})
	if got := firstConnections(t, l, domainDNS, "A", names); got[3] != len(names) {
		t.Fatalf("first connections to the policy's names went %v, want all %d via ISP 3", got, len(names))
	}
	was := map[string]int{}
	for _, src := range memorySources {
		was[src] = onOne(t, l, src, 10, "source "+src)
	}
	t.Logf("sources stuck to %v", was)

	d.stop(syscall.SIGTERM)
	if !strings.Contains(d.log(), "sticky sources and learned addresses kept for the next start") {
		t.Fatalf("the stop wrote nothing down:\n%s", d.log())
	}
	if out, err := l.Exec(l.Router, "nft", "list", "table", "inet", "wanpin"); err == nil {
		t.Fatalf("the table outlived a clean stop:\n%s", out)
	}
	d.start()
	if !strings.Contains(d.log(), "sticky sources and learned addresses of the last run") {
		t.Fatalf("the start read nothing:\n%s", d.log())
	}

	// The cached answer: the same address, asked for no more.
	for i := range names {
		addr := fmt.Sprintf("203.0.113.%d", 128+i)
		if isp := connectISP(t, l, addr); isp != 3 {
			t.Errorf("a connection to %s, learned before the restart, went via ISP %d, want 3", addr, isp)
		}
	}
	for _, src := range memorySources {
		if got := onOne(t, l, src, 10, "source "+src+" after the restart"); got != was[src] {
			t.Errorf("source %s on ISP %d after the restart, was on %d", src, got, was[src])
		}
	}
	out, code := d.cli(0, "status", "--json")
	var st core.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: exit %d: %s", code, out)
	}
	if st.StickyTotal != len(memorySources) {
		t.Errorf("status: %d sticky sources after the restart, want %d", st.StickyTotal, len(memorySources))
	}
	for _, e := range st.Sticky {
		if e.Left <= 9*60 || e.Left > 10*60 {
			t.Errorf("status: %+v, want just under 10 minutes left", e)
		}
	}
	if out := run(t, l, l.Router, "nft", "list", "set", "inet", "wanpin", "p_stream_dom4"); !strings.Contains(out, `comment "d1.stream.example"`) {
		t.Errorf("the learned addresses came back without their names:\n%s", out)
	}
}
