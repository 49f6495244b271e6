package e2e

import (
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
