package flush

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/wanpin/wanpin/internal/nstest"
	"github.com/wanpin/wanpin/pkg/inet"
)

// BenchmarkFlushMark100k: 100,000 entries pinned to uplink 1 and 100,000
// to uplink 2; flushing uplink 1 is timed (ms/flush), and the benchmark
// fails if a single entry of uplink 2 is lost. The whole conntrack table
// of the machine is limited by nf_conntrack_max (262,144 by default), so
// 200,000 fit. Run: go test ./pkg/flush -run XXX -bench FlushMark100k -benchtime 1x
func BenchmarkFlushMark100k(b *testing.B) {
	const n = 100_000
	ns := nstest.New(b, "wpcb")
	f, err := New(int(ns.Handle))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fill(b, f, n, 0x10000, 1)
		fill(b, f, n, 0x20000, 3)
		b.StartTimer()
		start := time.Now()
		got, err := f.FlushMark(0x10000, 0xff0000, inet.IPv4)
		total += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		counts, err := f.CountByMark(0xff0000)
		if err != nil {
			b.Fatal(err)
		}
		if got != n || counts[0x10000] != 0 || counts[0x20000] != n {
			b.Fatalf("flushed %d (want %d); left: uplink 1 %d, uplink 2 %d (want 0, %d)", got, n, counts[0x10000], counts[0x20000], n)
		}
		if _, err := f.FlushMark(0x20000, 0xff0000, inet.IPv4); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/flush")
	b.ReportMetric(0, "lost-entries")
}

// fill creates n UDP entries with mark, from 192.0.2.<hostBase..> with
// distinct source ports, without traffic.
func fill(b *testing.B, f *Flusher, n int, mark uint32, hostBase byte) {
	b.Helper()
	dst := netip.MustParseAddr("203.0.113.10")
	for i := 0; i < n; i++ {
		src := netip.AddrFrom4([4]byte{192, 0, 2, hostBase + byte(i/60000)})
		fl := conntrack.NewFlow(17, 0, src, dst, uint16(1024+i%60000), 53, 600, mark)
		if err := f.c.Create(fl); err != nil {
			b.Fatalf("creating entry %d: %v", i, err)
		}
	}
}
