package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// lastSeenSince is the source the server saw in the flow's last answer
// after t, if any.
func lastSeenSince(f *netlab.UDPFlow, t time.Time) (string, bool) {
	a := f.Answers()
	if len(a) == 0 || !a[len(a)-1].At.After(t) {
		return "", false
	}
	return a[len(a)-1].Seen, true
}

// failUplink takes ISP i's service away (or gives it back): upstream
// (the ISP blackholes, the link stays up) or by carrier.
func failUplink(t *testing.T, l *netlab.Lab, how string, i int, fail bool) {
	t.Helper()
	var err error
	if how == "blackhole" {
		err = l.Blackhole(i, fail)
	} else {
		err = l.SetCarrier(i, !fail)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestRouterConnectedUDPFailover: a connected UDP socket of the router's
// own (an NTP or VPN client: the kernel fixed its source address at
// connect) follows the router's traffic to the live uplink when its ISP
// dies, upstream or by carrier, in both families, translated there, and
// stays there when its ISP comes back. Before, the uplink's `from` rule
// kept it on the dead one for as long as the socket lived.
func TestRouterConnectedUDPFailover(t *testing.T) {
	for _, fam := range []string{"IPv4", "IPv6"} {
		for _, how := range []string{"blackhole", "carrier"} {
			t.Run(fam+"/"+how, func(t *testing.T) {
				l := newLab(t, 2)
				d := startWanpin(t, l, routerHealth())
				dst := netlab.ServerAddr4
				if fam == "IPv6" {
					dst = netlab.ServerAddr6
				}
				f, err := l.StartConnectedUDPFlow(l.Router, dst, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				start := time.Now()
				var isp int
				waitUntil(t, 5*time.Second, "answers", func() (bool, string) {
					seen, ok := lastSeenSince(f, start)
					isp = l.ISPOf(seen)
					return ok && isp != 0, seen
				})
				other := 3 - isp
				failUplink(t, l, how, isp, true)
				d.waitFor(fmt.Sprintf(`uplink down" uplink=isp%d`, isp), 1, 5*time.Second)
				down := time.Now()
				waitUntil(t, 5*time.Second, fmt.Sprintf("the flow from %s answered through ISP %d", f.Local(), other), func() (bool, string) {
					seen, ok := lastSeenSince(f, down)
					return ok && l.ISPOf(seen) == other, fmt.Sprintf("%q, %d sends refused", seen, f.Failed())
				})
				t.Logf("moved to ISP %d %v after the down", other, time.Since(down).Round(time.Millisecond))
				failUplink(t, l, how, isp, false)
				d.waitFor(fmt.Sprintf(`uplink up" uplink=isp%d`, isp), 2, 15*time.Second)
				back := time.Now()
				waitUntil(t, 3*time.Second, "answers after the return", func() (bool, string) {
					_, ok := lastSeenSince(f, back.Add(time.Second))
					return ok, ""
				})
				if seen, _ := lastSeenSince(f, back); l.ISPOf(seen) != other {
					t.Errorf("after ISP %d came back the flow is seen as %q, want it kept on ISP %d", isp, seen, other)
				}
				assertNoSpoofed(t, l)
			})
		}
	}
}

// TestAllDownThenOne: a LAN UDP flow with a fixed 5-tuple (VoIP, a VPN)
// keeps sending while both ISPs are dead, so postrouting pins its new
// entry to the uplink the main table sent it out of, though that one is
// down. When ISP 2 comes back, the stranded entry is flushed and the
// flow's next packet goes through ISP 2; before, each packet refreshed
// the entry on the dead uplink for good.
func TestAllDownThenOne(t *testing.T) {
	for _, how := range []string{"blackhole", "carrier"} {
		t.Run(how, func(t *testing.T) {
			l := newLab(t, 2)
			d := startWanpin(t, l, routerHealth())
			f, err := l.StartUDPFlow(40100, netlab.ServerAddr4, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			failUplink(t, l, how, 1, true)
			failUplink(t, l, how, 2, true)
			d.waitFor(`uplink down" uplink=isp1`, 1, 5*time.Second)
			d.waitFor(`uplink down" uplink=isp2`, 1, 5*time.Second)
			// The flow's packets meanwhile make a new entry: wait for it.
			waitUntil(t, 3*time.Second, "the flow's entry pinned while both are down", func() (bool, string) {
				out, _ := l.Exec(l.Router, "conntrack", "-L", "-p", "udp", "--orig-port-src", "40100")
				return strings.Contains(out, "UNREPLIED"), out
			})
			failUplink(t, l, how, 2, false)
			d.waitFor(`uplink up" uplink=isp2`, 2, 15*time.Second)
			up := time.Now()
			waitUntil(t, 5*time.Second, "the flow answered through ISP 2", func() (bool, string) {
				seen, ok := lastSeenSince(f, up)
				if ok && l.ISPOf(seen) == 2 {
					return true, ""
				}
				out, _ := l.Exec(l.Router, "conntrack", "-L", "-p", "udp", "--orig-port-src", "40100")
				return false, fmt.Sprintf("seen %q; conntrack: %s", seen, out)
			})
			if !strings.Contains(d.log(), `"pinned while no uplink was up"`) {
				t.Errorf("no flush of the stranded entries in the log:\n%s", d.log())
			}
			assertNoSpoofed(t, l)
		})
	}
}

// TestStrayPPPDown: one `wanpin event down wan1` (an ip-down hook run by
// hand, or pppd's demand mode keeping its interface) while wan1 stays
// up with its address and gateway takes the uplink out at once, as a
// real ip-down would, but only until core.DownHintHold (10 s) shows that
// the kernel does not confirm it: then the uplink is back, with a line
// saying why.
func TestStrayPPPDown(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	if out, code := d.cli(0, "event", "down", "wan1"); code != 0 {
		t.Fatalf("event down wan1: %d %s", code, out)
	}
	d.waitFor(`uplink down" uplink=isp1`, 1, 5*time.Second)
	d.waitFor("ppp ip-down not confirmed by the kernel", 1, 15*time.Second)
	d.waitFor(`uplink up" uplink=isp1`, 2, 2*time.Second)
	waitUntil(t, 5*time.Second, "LAN connections through both again", func() (bool, string) {
		c, err := l.CurlMany(20)
		return err == nil && c[1] > 0 && c[2] > 0, fmt.Sprint(c, err)
	})
}
