package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// failbackConfig: isp1 is the primary, isp2 a tier-2 backup whose
// connections move (or not) when isp1 comes back.
func failbackConfig(mode string) string {
	return fmt.Sprintf(`
[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"
tier = 2
failback = %q
`, mode)
}

// TestFailback: a stream and a UDP flow on the tier-2 backup while the
// primary is out. When it comes back, with failback = "move" the UDP
// flow's next datagrams leave by the primary and the stream is reset at
// once (its application reconnects, over the primary), within a second;
// with "keep" both stay on the backup.
func TestFailback(t *testing.T) {
	for _, mode := range []string{"move", "keep"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 2)
			d := startWanpin(t, l, failbackConfig(mode))
			if err := l.SetCarrier(1, false); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink down" uplink=isp1`, 1, 5*time.Second)
			s, err := l.OpenStream("")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if isp := l.ISPOf(s.Peer()); isp != 2 {
				t.Fatalf("the stream left by ISP %d while isp1 is out, want 2", isp)
			}
			f, err := l.StartUDPFlow(41000, netlab.ServerAddr4, 20*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			a := waitAnswers(t, f, 3, time.Now(), "the UDP flow on the backup")
			if isp := l.ISPOf(a[len(a)-1].Seen); isp != 2 {
				t.Fatalf("the UDP flow left by ISP %d, want 2", isp)
			}

			if err := l.SetCarrier(1, true); err != nil {
				t.Fatal(err)
			}
			d.waitFor(`msg="uplink up" uplink=isp1`, 1, 5*time.Second)
			back := time.Now()
			if mode == "keep" {
				if msg := stillFlowing(s); msg != "" {
					t.Errorf("keep: the stream %s", msg)
				}
				a := waitAnswers(t, f, 5, time.Now(), "the UDP flow after isp1's return")
				if isp := l.ISPOf(a[len(a)-1].Seen); isp != 2 {
					t.Errorf("keep: the UDP flow moved to ISP %d", isp)
				}
				if got := strings.Count(d.log(), "failback: connections moved"); got != 0 {
					t.Errorf("keep: %d failback lines", got)
				}
				return
			}
			d.waitFor(`msg="failback: connections moved" uplink=isp2 to=isp1 family=IPv4 tcp_reset=`, 1, 2*time.Second)
			if m := regexp.MustCompile(`failback: connections moved" uplink=isp2 to=isp1 family=IPv4 tcp_reset=(\d+) flushed=(\d+)`).FindStringSubmatch(d.log()); m == nil || m[1] == "0" || m[2] == "0" {
				t.Errorf("want the stream reset and the UDP flow flushed: %v", m)
			}
			took := waitUntil(t, 2*time.Second, "the stream reset", func() (bool, string) {
				return s.Err() != nil, fmt.Sprintf("%d bytes", s.Received())
			})
			t.Logf("stream reset %v after isp1 came back: %v", took.Round(time.Millisecond), s.Err())
			waitUntil(t, time.Second, "the UDP flow on isp1", func() (bool, string) {
				a := f.Answers()
				last := a[len(a)-1]
				return last.At.After(back) && l.ISPOf(last.Seen) == 1, last.Seen
			})
			// The application reconnects: over the primary.
			s2, err := l.OpenStream("")
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if isp := l.ISPOf(s2.Peer()); isp != 1 {
				t.Errorf("the reconnected stream left by ISP %d, want 1", isp)
			}
			if msg := stillFlowing(s2); msg != "" {
				t.Errorf("the reconnected stream %s", msg)
			}
		})
	}
}
