package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestCarrierLossFailover: uplink 1 loses carrier; new connections all go
// through uplink 2, and a stream already on uplink 2 loses nothing.
func TestCarrierLossFailover(t *testing.T) {
	l := newLab(t, 2)
	d, s := startWithStream(t, l)
	if err := l.SetCarrier(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink down", 1, 5*time.Second)
	counts, err := l.CurlMany(50)
	if err != nil {
		t.Fatal(err)
	}
	if counts[2] != 50 {
		t.Errorf("with uplink 1 down: %v, want all 50 through ISP 2", counts)
	}
	if why := stillFlowing(s); why != "" {
		t.Errorf("stream on uplink 2 %s", why)
	}
	assertNoSpoofed(t, l)
}

// TestPinnedAcrossFailback: uplink 1 down, a stream opens through uplink
// 2, uplink 1 comes back: the stream keeps flowing through uplink 2
// without a stall, while new connections use both again.
func TestPinnedAcrossFailback(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	if err := l.SetCarrier(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink down", 1, 5*time.Second)
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if l.ISPOf(s.Peer()) != 2 {
		t.Fatalf("stream through %s, want ISP 2", s.Peer())
	}
	counts := failbackWithoutStall(t, l, d, s, func() map[int]int {
		c, _ := l.CurlMany(100)
		return c
	})
	if counts[1] < 20 || counts[2] < 20 {
		t.Errorf("new connections after failback: %v, want both uplinks used", counts)
	}
	if s.Err() != nil {
		t.Errorf("stream broke: %v", s.Err())
	}
	assertNoSpoofed(t, l)
}

// failbackWithoutStall brings uplink 1 back while stream s runs pinned to
// uplink 2: while newConns opens new connections, whose counts per ISP it
// returns, and until s has received a second of the stream service's
// writes, s must never go 50 ms without growing.
func failbackWithoutStall(t *testing.T, l *netlab.Lab, d *daemon, s *netlab.Stream, newConns func() map[int]int) map[int]int {
	t.Helper()
	const (
		stall    = 50 * time.Millisecond
		progress = 100 * 64 << 10 // 64 KiB every 10 ms for a second
		limit    = 15 * time.Second
	)
	if err := l.SetCarrier(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink up", 3, 5*time.Second)
	done := make(chan map[int]int, 1)
	go func() { done <- newConns() }()
	back := time.Now()
	from := s.Received()
	last, grew := from, back
	var counts map[int]int
	finished := false
	var still time.Duration // the longest the stream was seen standing still
	for !finished || last-from < progress {
		// Sample the stream every 2 ms, and at once when newConns returns.
		select {
		case counts = <-done:
			finished = true
		case <-time.After(2 * time.Millisecond):
		}
		now, at := s.Received(), time.Now()
		if now != last {
			last, grew = now, at
		} else {
			// No byte since grew: the stream has stood still that long.
			still = max(still, at.Sub(grew))
		}
		var why string
		switch {
		case at.Sub(grew) >= stall:
			why = fmt.Sprintf("stalled %v after uplink 1 came back: nothing for %v", grew.Sub(back).Round(time.Millisecond), at.Sub(grew).Round(time.Millisecond))
		case at.Sub(back) > limit:
			why = fmt.Sprintf("still short of %d bytes %v after uplink 1 came back", progress, limit)
		default:
			continue
		}
		if !finished {
			<-done
		}
		t.Fatalf("stream %s (%d bytes since, err %v)", why, last-from, s.Err())
	}
	t.Logf("after uplink 1 came back the stream received %d bytes in %v, standing still at most %v",
		last-from, grew.Sub(back).Round(time.Millisecond), still.Round(time.Millisecond))
	return counts
}

// TestUDPRescue: a UDP flow with a fixed source port runs through uplink
// 1; within a second of uplink 1 going down it continues through uplink 2
// (the server sees the new source address). Without the conntrack flush
// the flow would stay pinned to the dead uplink forever. Both families.
func TestUDPRescue(t *testing.T) {
	for _, c := range []struct {
		name string
		port int
		dst  string
	}{{"IPv4", 40000, netlab.ServerAddr4}, {"IPv6", 40006, netlab.ServerAddr6}} {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t, 2)
			d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
			started := time.Now()
			f, err := l.StartUDPFlow(c.port, c.dst, 20*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			a := waitAnswers(t, f, 1, started, "the UDP flow before the failure")
			if l.ISPOf(a[len(a)-1].Seen) != 1 {
				t.Fatalf("flow before the failure: %v", a)
			}
			down := time.Now()
			if err := l.SetCarrier(1, false); err != nil {
				t.Fatal(err)
			}
			deadline := down.Add(3 * time.Second)
			for time.Now().Before(deadline) {
				for _, ans := range f.Answers() {
					if ans.At.After(down) && l.ISPOf(ans.Seen) == 2 {
						took := ans.At.Sub(down)
						t.Logf("%s UDP flow resumed through ISP 2 after %v", c.name, took.Round(time.Millisecond))
						if took > time.Second {
							t.Errorf("UDP flow took %v to move, want under 1 s", took)
						}
						// The line is written just after the flush returns.
						d.waitFor("conntrack flushed", 1, 2*time.Second)
						assertNoSpoofed(t, l)
						return
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Fatalf("UDP flow never moved to ISP 2; answers since the failure: %v", f.Answers()[len(a):])
		})
	}
}
