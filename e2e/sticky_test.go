package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/pkg/core"
)

func stickyConfig(timeout, extra string) string {
	return fmt.Sprintf(`sticky = %q

[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"
%s`, timeout, extra)
}

// onOne opens n connections from src and returns the one ISP they all
// took, failing when they did not all take one.
func onOne(t *testing.T, l *netlab.Lab, src string, n int, what string) int {
	t.Helper()
	counts, err := l.CurlManySrc(src, netlab.ServerAddr4, n)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(counts) != 1 {
		t.Fatalf("%s: %d connections from %s spread over ISPs %v, want them all on one", what, n, src, counts)
	}
	for isp := range counts {
		return isp
	}
	return 0
}

// TestSticky: with weights 1:1 and sticky, every new connection of one
// source takes one uplink, across a reload and a flap of the other
// uplink; the source moves at once when its uplink goes down, status and
// explain show what is remembered, and after the timeout the source is
// balanced afresh.
func TestSticky(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, stickyConfig("8s", ""))
	a, b := netlab.LANHost4, netlab.LANHostAlt4
	ispA := onOne(t, l, a, 50, "source A")
	ispB := onOne(t, l, b, 50, "source B")
	t.Logf("A sticks to ISP %d, B to ISP %d", ispA, ispB)

	// status and explain name each source's uplink and the time left.
	out, code := d.cli(0, "status", "--json")
	var st core.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: exit %d: %s", code, out)
	}
	if st.StickyTotal != 2 || len(st.Sticky) != 2 {
		t.Errorf("status: %d sticky sources (%d listed), want 2: %+v", st.StickyTotal, len(st.Sticky), st.Sticky)
	}
	for _, e := range st.Sticky {
		want := ispA
		if e.Source.String() == b {
			want = ispB
		}
		if e.Uplink != fmt.Sprintf("isp%d", want) || e.Left <= 0 || e.Left > 8 {
			t.Errorf("status: %+v, want uplink isp%d and up to 8 s left", e, want)
		}
	}
	out, code = d.cli(0, "explain", "--src", a, "--dst", netlab.ServerAddr4, "--proto", "tcp", "--dport", "80")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("last new connection took isp%d", ispA)) {
		t.Errorf("explain --src %s: exit %d:\n%s", a, code, out)
	}

	// A reload that replaces the table keeps the memory.
	d.writeConfig(stickyConfig("8s", "\n[[policy]]\nname = \"discard\"\nports = [9]\n"))
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	d.waitFor("nftables applied", 2, 5*time.Second)
	if got := onOne(t, l, a, 20, "source A after a reload"); got != ispA {
		t.Errorf("source A on ISP %d after a reload, was on %d", got, ispA)
	}
	if got := onOne(t, l, b, 20, "source B after a reload"); got != ispB {
		t.Errorf("source B on ISP %d after a reload, was on %d", got, ispB)
	}

	// The other uplink flaps: A stays.
	other := 3 - ispA
	flaps := 0
	flap := func(i int) {
		flaps++
		if err := l.SetCarrier(i, false); err != nil {
			t.Fatal(err)
		}
		d.waitFor(fmt.Sprintf(`msg="uplink down" uplink=isp%d`, i), flaps, 5*time.Second)
		if err := l.SetCarrier(i, true); err != nil {
			t.Fatal(err)
		}
		d.waitFor(fmt.Sprintf(`msg="uplink up" uplink=isp%d`, i), flaps, 5*time.Second)
	}
	flap(other)
	if got := onOne(t, l, a, 20, "source A after the other uplink flapped"); got != ispA {
		t.Errorf("source A on ISP %d after ISP %d flapped, was on %d", got, other, ispA)
	}
	if ispB == ispA {
		if got := onOne(t, l, b, 20, "source B after the other uplink flapped"); got != ispB {
			t.Errorf("source B on ISP %d after ISP %d flapped, was on %d", got, other, ispB)
		}
	}

	// A's uplink goes down: A moves at once, and sticks there.
	before := time.Now()
	if err := l.SetCarrier(ispA, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(fmt.Sprintf(`msg="uplink down" uplink=isp%d`, ispA), 1, 5*time.Second)
	if got := onOne(t, l, a, 20, "source A after its uplink went down"); got != other {
		t.Errorf("source A on ISP %d with its uplink down, want %d", got, other)
	}
	t.Logf("source A moved %v after its uplink lost carrier", time.Since(before).Round(time.Millisecond))
	if took := time.Since(before); took > 2*time.Second {
		// Bounded by observable moments: the carrier command before,
		// 20 connections after.
		t.Errorf("source A took %v to move", took)
	}
	if err := l.SetCarrier(ispA, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(fmt.Sprintf(`msg="uplink up" uplink=isp%d`, ispA), 1, 5*time.Second)
	if got := onOne(t, l, a, 20, "source A after its old uplink came back"); got != other {
		t.Errorf("source A on ISP %d after its old uplink came back, want it to stay on %d", got, other)
	}

	// A short timeout: after it, the source is balanced afresh. Each
	// round waits for the memory to lapse and opens one connection;
	// with 1:1 weights both ISPs come up within a few rounds (twelve
	// rounds on one ISP: 1 in 2048).
	d.writeConfig(stickyConfig("1s", ""))
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	d.waitFor("nftables applied", 3, 5*time.Second)
	// status reads the kernel's sets at most once a second: A is on its
	// new uplink there too.
	waitUntil(t, 3*time.Second, "status showing source A on its new uplink", func() (bool, string) {
		out, _ := d.cli(0, "status", "--json")
		var st core.Status
		_ = json.Unmarshal([]byte(out), &st)
		for _, e := range st.Sticky {
			if e.Source.String() == a {
				return e.Uplink == fmt.Sprintf("isp%d", other), fmt.Sprintf("%+v", e)
			}
		}
		return false, out
	})
	seen := map[int]int{}
	for round := 0; round < 12 && len(seen) < 2; round++ {
		waitUntil(t, 10*time.Second, "source A forgotten", func() (bool, string) {
			// The kernel's sets themselves: status reads them at most
			// once a second.
			out := run(t, l, l.Router, "nft", "list", "table", "inet", "wanpin")
			return !strings.Contains(out, a+" "), out
		})
		seen[onOne(t, l, a, 1, "source A after the timeout")]++
	}
	if len(seen) < 2 {
		t.Errorf("after the timeout, source A's new connections all took one ISP: %v", seen)
	}
}
