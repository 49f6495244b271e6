package mptcp

import (
	"slices"
	"testing"
	"time"
)

// TestKernelThroughput prints what a second uplink adds to one download:
// both uplinks shaped to 40 Mbit/s at the server's side, MPTCP and plain
// TCP downloads of the same size measured in turn, the order swapped
// every cycle (go test -v -run TestKernelThroughput ./pkg/mptcp prints
// the rates). It asserts only that the median ratio of five cycles is
// above 1.3. Measured here (14 runs of three cycles, 7 of five): medians
// from 1.64 to 2.00, 1.82 with both CPUs kept busy by other processes;
// single cycles from 0.87 to 2.65. Now and then (3 cycles of 77) an MPTCP
// download got no more than one uplink's rate for its whole 8 MB
// although its second subflow was up (not investigated: the server's
// scheduler decides): hence the median, never one cycle. The check is
// the sum of two uplinks, not a number of seconds.
func TestKernelThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement, not a check")
	}
	l := newLab(t)
	for _, dev := range []string{"u1", "u2"} {
		l.server.Run(t, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "40mbit", "burst", "32kb", "latency", "20ms")
	}
	l.serve(t)
	if _, _, err := RaiseLimits(l.c, 2); err != nil {
		t.Fatal(err)
	}
	l.sync(t, l.want)
	const size = 8 << 20
	rate := func(mptcp bool) float64 {
		d := l.dial(t, mptcp)
		defer d.Abort()
		if mptcp {
			// Measured from the second subflow on: the join is what is
			// being compared, not the handshake.
			l.subflows(t, "192.0.2.1:1 198.51.100.1:1")
		}
		flowing(t, d, 1<<20, "warm-up")
		start, b := time.Now(), d.Bytes.Load()
		flowing(t, d, size, "measured")
		return float64(d.Bytes.Load()-b) * 8 / time.Since(start).Seconds() / 1e6
	}
	var ratios []float64
	for i := range 5 {
		var m, p float64
		if i%2 == 0 {
			m, p = rate(true), rate(false)
		} else {
			p, m = rate(false), rate(true)
		}
		ratios = append(ratios, m/p)
		t.Logf("cycle %d: MPTCP %.1f Mbit/s, plain TCP %.1f Mbit/s, ratio %.2f", i+1, m, p, m/p)
		// The next connection starts with no subflow left from this one.
		l.subflows(t, "")
	}
	slices.Sort(ratios)
	t.Logf("median ratio MPTCP/TCP %.2f over %d interleaved cycles of %d MB each, two uplinks of tbf 40mbit", ratios[len(ratios)/2], len(ratios), size>>20)
	if ratios[len(ratios)/2] <= 1.3 {
		t.Errorf("median ratio %.2f: the second uplink adds less than 30%%", ratios[len(ratios)/2])
	}
}
