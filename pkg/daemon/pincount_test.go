package daemon

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/nstest"
	"github.com/wanpin/wanpin/pkg/flush"
)

// nlMsg builds one netlink message of the given type and sequence with
// an nfgenmsg and the attributes.
func nlMsg(typ uint16, seq uint32, attrs ...[]byte) []byte {
	body := []byte{unix.AF_INET, 0, 0, 0}
	for _, a := range attrs {
		body = append(body, a...)
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
	}
	h := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(h[0:4], uint32(len(h)+len(body)))
	binary.NativeEndian.PutUint16(h[4:6], typ)
	binary.NativeEndian.PutUint32(h[8:12], seq)
	return append(h, body...)
}

func nlAttr(typ uint16, v []byte) []byte {
	a := make([]byte, 4, 4+len(v))
	binary.NativeEndian.PutUint16(a[0:2], uint16(4+len(v)))
	binary.NativeEndian.PutUint16(a[2:4], typ)
	return append(a, v...)
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// TestCountBatch: marks are found among other attributes (nested ones
// included), masked, mark 0 left out, other dumps' answers skipped, the
// end and kernel errors seen, a truncated message refused.
func TestCountBatch(t *testing.T) {
	const seq = 7
	entry := uint16(unix.NFNL_SUBSYS_CTNETLINK << 8) // IPCTNL_MSG_CT_NEW, as a dump answers
	tuple := nlAttr(1|unix.NLA_F_NESTED, nlAttr(1, []byte{1, 2, 3, 4, 5, 6}))
	var b []byte
	b = append(b, nlMsg(entry, seq, tuple, nlAttr(3, be32(8)), nlAttr(ctaMark, be32(0x10042)))...)
	b = append(b, nlMsg(entry, seq, nlAttr(ctaMark, be32(0x10001)), tuple)...)
	b = append(b, nlMsg(entry, seq, nlAttr(ctaMark, be32(0x20000)))...)
	b = append(b, nlMsg(entry, seq, nlAttr(ctaMark, be32(0x42)))...) // not pinned: mark & mask == 0
	b = append(b, nlMsg(entry, seq, tuple)...)                       // no mark at all
	b = append(b, nlMsg(entry, seq-1, nlAttr(ctaMark, be32(0x20000)))...)
	out := map[uint32]int{}
	done, err := countBatch(b, seq, 0xff0000, out)
	if err != nil || done {
		t.Fatalf("countBatch: done %v, err %v", done, err)
	}
	if want := map[uint32]int{0x10000: 2, 0x20000: 1}; !cmp.Equal(out, want) {
		t.Errorf("counts %v, want %v", out, want)
	}
	if done, err := countBatch(nlMsg(unix.NLMSG_DONE, seq), seq, 0xff0000, out); !done || err != nil {
		t.Errorf("NLMSG_DONE: done %v, err %v", done, err)
	}
	errMsg := nlMsg(unix.NLMSG_ERROR, seq)
	eperm := -int32(unix.EPERM)
	binary.NativeEndian.PutUint32(errMsg[unix.NLMSG_HDRLEN:], uint32(eperm))
	if _, err := countBatch(errMsg, seq, 0xff0000, out); !errors.Is(err, unix.EPERM) {
		t.Errorf("NLMSG_ERROR EPERM: %v", err)
	}
	whole := nlMsg(entry, seq, nlAttr(ctaMark, be32(0x10000)))
	if _, err := countBatch(whole[:len(whole)-2], seq, 0xff0000, out); err == nil {
		t.Error("a truncated message was accepted")
	}
	// A bad attribute length ends the entry's scan without a mark.
	bad := nlMsg(entry, seq, []byte{2, 0, 8, 0}, nlAttr(ctaMark, be32(0x10000)))
	before := out[0x10000]
	if _, err := countBatch(bad, seq, 0xff0000, out); err != nil || out[0x10000] != before {
		t.Errorf("bad attribute: %v, count %d -> %d", err, before, out[0x10000])
	}
}

// counterIn opens a ctCounter in the namespace.
func counterIn(t testing.TB, ns *nstest.NS) *ctCounter {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns.Handle); err != nil {
		t.Fatal(err)
	}
	c, cerr := newCTCounter()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's namespace: %v", err)
	}
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fillCT creates n UDP entries per mark in the namespace, IPv4 and IPv6
// alternately.
func fillCT(t testing.TB, ns *nstest.NS, n int, marks ...uint32) {
	t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst4, dst6 := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8:ff::10")
	for mi, mark := range marks {
		for i := range n {
			src, dst := netip.AddrFrom4([4]byte{192, 0, 2, byte(8*mi + i/60000)}), dst4
			if i%2 == 1 {
				src, dst = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 1, 15: byte(8*mi + i/60000)}), dst6
			}
			if err := c.Create(conntrack.NewFlow(17, 0, src, dst, uint16(1024+i%60000), 53, 600, mark)); err != nil {
				t.Fatalf("creating entry %d of mark %#x: %v", i, mark, err)
			}
		}
	}
}

// TestCTCounterAgrees: the counter finds what pkg/flush's decoding count
// finds, both families, marks masked, across many reads of a dump.
func TestCTCounterAgrees(t *testing.T) {
	ns := nstest.New(t, "wpct")
	fillCT(t, ns, 3000, 0x10000, 0x20042, 0x42, 0)
	c := counterIn(t, ns)
	f, err := flush.New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, mask := range []uint32{0xff0000, 0xffffffff} {
		got, err := c.CountByMark(mask)
		if err != nil {
			t.Fatal(err)
		}
		want, err := f.CountByMark(mask)
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(got, want) {
			t.Errorf("mask %#x: %v, pkg/flush counts %v", mask, got, want)
		}
	}
	if got, _ := c.CountByMark(0xff0000); got[0x10000] != 3000 || got[0x20000] != 3000 || len(got) != 2 {
		t.Errorf("counts %v, want 3000 of 0x10000 and of 0x20000", got)
	}
	// After an error the socket is closed and opened anew at the next
	// count (here in the test's namespace, whose table holds nothing of
	// ours: only the reopening is checked).
	unix.Close(c.fd)
	c.fd = -1
	if _, err := c.CountByMark(0xff0000); err != nil || c.fd < 0 {
		t.Errorf("after the socket was lost: %v", err)
	}
	c.Close()
	if _, err := c.CountByMark(0xff0000); err == nil {
		t.Error("a closed counter counted")
	}
}

// BenchmarkCountByMark200k: 100,000 entries on each of two marks, counted
// by this counter and by pkg/flush's, with the process's CPU (user+system:
// the kernel's dump included), its kernel part and the bytes allocated
// per count.
// Run: go test ./pkg/daemon -run XXX -bench CountByMark200k -benchtime 5x
func BenchmarkCountByMark200k(b *testing.B) {
	ns := nstest.New(b, "wpctb")
	fillCT(b, ns, 100_000, 0x10000, 0x20000)
	c := counterIn(b, ns)
	f, err := flush.New(int(ns.Handle))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for _, k := range []struct {
		name  string
		count func(uint32) (map[uint32]int, error)
	}{{"raw", c.CountByMark}, {"flush", f.CountByMark}} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			runtime.GC()
			user0, sys0 := processCPU()
			for b.Loop() {
				got, err := k.count(0xff0000)
				if err != nil {
					b.Fatal(err)
				}
				if got[0x10000] != 100_000 || got[0x20000] != 100_000 {
					b.Fatalf("counts %v", got)
				}
			}
			user, sys := processCPU()
			b.ReportMetric(float64((user-user0+sys-sys0).Microseconds())/1000/float64(b.N), "cpu-ms/count")
			b.ReportMetric(float64((sys-sys0).Microseconds())/1000/float64(b.N), "kernel-ms/count")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() (user, sys time.Duration) {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
