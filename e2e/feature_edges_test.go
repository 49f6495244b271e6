package e2e

import (
	"fmt"
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

// TestStickyReorderReload: a reload that swaps the uplinks' order
// (so their marks) must keep each remembered source on its uplink.
func TestStickyReorderReload(t *testing.T) {
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

// TestStickyReorderRestart: the same across a restart (the memory
// file).
func TestStickyReorderRestart(t *testing.T) {
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

// TestDomainsCNAMEIntoEarlierPolicy: www.stream.example is a CNAME
// of cdn.elsewhere.example. A policy for elsewhere.example listed first
// must take the connection (the first policy that matches wins, and the
// answer's chain leads into its domain), not the later policy for
// stream.example alone; and the reverse chain (tv.elsewhere.example ->
// edge.stream.example) teaches both too.
func TestDomainsCNAMEIntoEarlierPolicy(t *testing.T) {
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

// TestQuotaLastResortMoveBack: isp1's quota used up (last resort,
// failback = "move"), isp2 down: new connections take isp1; when isp2
// comes back, isp1's connections move to it.
func TestQuotaLastResortMoveBack(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, `
[[uplink]]
name = "isp1"
interface = "wan1"
quota = "1kB"
failback = "move"

[[uplink]]
name = "isp2"
interface = "wan2"
`, "--state-dir", t.TempDir())
	waitUntil(t, 10*time.Second, "isp1's quota used up", func() (bool, string) {
		l.CurlMany(4)
		return strings.Contains(d.log(), `msg="quota used up" uplink=isp1`), ""
	})
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`msg="uplink down" uplink=isp2`, 1, 5*time.Second)
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if isp := l.ISPOf(s.Peer()); isp != 1 {
		t.Fatalf("stream by ISP %d with isp2 down, want 1 (the last resort)", isp)
	}
	if err := l.SetCarrier(2, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`msg="uplink up" uplink=isp2`, 1, 5*time.Second)
	d.waitFor(`msg="failback: connections moved" uplink=isp1 to=isp2`, 1, 3*time.Second)
	waitUntil(t, 3*time.Second, "the stream on the last resort reset", func() (bool, string) {
		return s.Err() != nil, fmt.Sprintf("%d bytes", s.Received())
	})
	if got, err := l.CurlMany(10); err != nil || got[2] != 10 {
		t.Errorf("10 connections after isp2's return: %v %v, want all by isp2", got, err)
	}
}

// TestDomainsLearnedAcrossUplinkDown: an address learned for a
// domain policy still steers once the policy's uplink has been down and
// come back, without a new DNS query.
func TestDomainsLearnedAcrossUplinkDown(t *testing.T) {
	for _, fb := range []string{"any", "none"} {
		t.Run(fb, func(t *testing.T) {
			l := newLabWith(t, netlab.Options{ISPs: 2, Resolvers: true})
			domainLab(t, l)
			cfg := strings.Replace(domainConfig(""), `domain_ttl_floor = "1s"`, `domain_ttl_floor = "10m"`, 1) + "fallback = \"" + fb + "\"\n"
			d := startWanpin(t, l, cfg)
			d.waitFor("domain policies: learning from DNS answers", 1, 5*time.Second)
			if c := firstConnections(t, l, domainDNS, "A", []string{"d7.stream.example"}); c[2] != 1 {
				t.Fatalf("first connection by %v, want ISP 2", c)
			}
			if err := l.SetCarrier(2, false); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink down" uplink=isp2`, 1, 5*time.Second)
			if err := l.SetCarrier(2, true); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink up" uplink=isp2`, 1, 5*time.Second)
			waitUntil(t, 3*time.Second, "the applied table after isp2's return", func() (bool, string) {
				return strings.Count(d.log(), "nftables applied") >= 3, ""
			})
			out := run(t, l, l.Router, "nft", "list", "table", "inet", "wanpin")
			if !strings.Contains(out, "203.0.113.134") {
				t.Errorf("the learned address of d7.stream.example is gone after isp2 was down and back:\n%s", out)
			}
			counts, err := l.CurlManySrc(netlab.LANHost4, "203.0.113.134", 3)
			if err != nil || counts[2] != 3 {
				t.Errorf("connections to the learned address after isp2's return: %v %v, want by ISP 2", counts, err)
			}
		})
	}
}
