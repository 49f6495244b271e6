package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

const reorderedSticky = `sticky = "10m"

[[uplink]]
name = "isp2"
interface = "wan2"

[[uplink]]
name = "isp1"
interface = "wan1"
`

// TestAuditStickyReorderReload: a reload that swaps the uplinks' order
// (so their marks) must keep each remembered source on its uplink.
func TestAuditStickyReorderReload(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, stickyConfig("10m", ""))
	a, b := netlab.LANHost4, netlab.LANHostAlt4
	ispA := onOne(t, l, a, 20, "source A")
	ispB := onOne(t, l, b, 20, "source B")
	t.Logf("A on ISP %d, B on ISP %d", ispA, ispB)
	d.writeConfig(reorderedSticky)
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	d.waitFor("nftables applied", 2, 5*time.Second)
	if got := onOne(t, l, a, 20, "source A after reorder"); got != ispA {
		t.Errorf("source A on ISP %d after a reload that reordered the uplinks, was on %d", got, ispA)
	}
	if got := onOne(t, l, b, 20, "source B after reorder"); got != ispB {
		t.Errorf("source B on ISP %d after a reload that reordered the uplinks, was on %d", got, ispB)
	}
}

// TestAuditStickyReorderRestart: the same across a restart (the memory
// file).
func TestAuditStickyReorderRestart(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, stickyConfig("10m", ""))
	a, b := netlab.LANHost4, netlab.LANHostAlt4
	ispA := onOne(t, l, a, 20, "source A")
	ispB := onOne(t, l, b, 20, "source B")
	t.Logf("A on ISP %d, B on ISP %d", ispA, ispB)
	d.stop(syscall.SIGTERM)
	d.writeConfig(reorderedSticky)
	d.start()
	if got := onOne(t, l, a, 20, "source A after restart"); got != ispA {
		t.Errorf("source A on ISP %d after a restart with the uplinks reordered, was on %d", got, ispA)
	}
	if got := onOne(t, l, b, 20, "source B after restart"); got != ispB {
		t.Errorf("source B on ISP %d after a restart with the uplinks reordered, was on %d", got, ispB)
	}
}

// TestAuditDomainsCNAMEIntoEarlierPolicy: www.stream.example is a CNAME
// of cdn.elsewhere.example. A policy for elsewhere.example listed first
// must take the connection (the first policy that matches wins, and the
// answer's chain leads into its domain), not the later policy for
// stream.example alone; and the reverse chain (tv.elsewhere.example ->
// edge.stream.example) teaches both too.
func TestAuditDomainsCNAMEIntoEarlierPolicy(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 3, Resolvers: true})
	domainLab(t, l)
	d := startWanpin(t, l, `domain_ttl_floor = "1m"

[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"
tier = 2

[[uplink]]
name = "isp3"
interface = "wan3"
tier = 3

[[policy]]
name = "cdn"
domains = ["elsewhere.example"]
uplinks = ["isp3"]

[[policy]]
name = "stream"
domains = ["stream.example"]
uplinks = ["isp2"]
`)
	d.waitFor("domain policies: learning from DNS answers", 1, 5*time.Second)
	if c := firstConnections(t, l, domainDNS, "A", []string{"www.stream.example"}); c[3] != 1 {
		t.Errorf("www.stream.example (CNAME cdn.elsewhere.example): first connection by ISPs %v, want ISP 3 (policy cdn, listed first)", c)
	}
	out := run(t, l, l.Router, "nft", "list", "table", "inet", "wanpin")
	for _, c := range []struct{ set, addr string }{
		{"p_cdn_dom4", "203.0.113.231"}, {"p_stream_dom4", "203.0.113.231"},
	} {
		i := strings.Index(out, "set "+c.set+" ")
		j := strings.Index(out[i+1:], "\n\t}")
		if i < 0 || j < 0 || !strings.Contains(out[i:i+1+j], c.addr) {
			t.Errorf("set %s lacks %s:\n%s", c.set, c.addr, out)
		}
	}
}
