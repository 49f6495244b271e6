package flush

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/nstest"
	"github.com/wanpin/wanpin/pkg/inet"
)

// insert creates n conntrack entries with the given mark in ns, without
// traffic, with the conntrack CLI.
func insert(t *testing.T, ns *nstest.NS, proto string, firstPort, n int, mark uint32) {
	t.Helper()
	script := fmt.Sprintf(`for p in $(seq %d %d); do conntrack -I -p %s -s 192.0.2.10 -d 203.0.113.10 --sport $p --dport 80 %s -t 300 --mark %d >/dev/null 2>&1 || exit 1; done`,
		firstPort, firstPort+n-1, proto, map[string]string{"tcp": "--state ESTABLISHED", "udp": ""}[proto], mark)
	ns.Run(t, "sh", "-c", script)
}

func count(t *testing.T, ns *nstest.NS) map[string]int {
	t.Helper()
	// stdout only: conntrack's summary on stderr can land in the middle
	// of a buffered stdout line.
	out, _ := ns.Try("sh", "-c", "conntrack -L 2>/dev/null")
	c := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "mark="); i >= 0 {
			c[strings.Fields(l[i:])[0]]++
		}
	}
	return c
}

func TestFlushMarkOnlyThatUplink(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack CLI")
	}
	ns := nstest.New(t, "wpc")
	insert(t, ns, "tcp", 1000, 100, 0x10000) // uplink 1
	insert(t, ns, "udp", 2000, 50, 0x10001)  // uplink 1 + another program's bit
	insert(t, ns, "tcp", 3000, 80, 0x20000)  // uplink 2
	insert(t, ns, "udp", 4000, 20, 0x1)      // not wanpin's at all
	f, err := New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counts, err := f.CountByMark(0xff0000)
	if err != nil {
		t.Fatal(err)
	}
	if counts[0x10000] != 150 || counts[0x20000] != 80 || len(counts) != 2 {
		t.Errorf("CountByMark: %v", counts)
	}
	n, err := f.FlushMark(0x10000, 0xff0000, inet.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if n != 150 {
		t.Errorf("flushed %d, want 150", n)
	}
	after, err := f.CountByMark(0xffffffff)
	if err != nil {
		t.Fatal(err)
	}
	if after[0x20000] != 80 || after[0x1] != 20 || len(after) != 2 {
		t.Errorf("library count after the flush: %v", after)
	}
	left := count(t, ns)
	want := map[string]int{fmt.Sprintf("mark=%d", 0x20000): 80, "mark=1": 20}
	if fmt.Sprint(left) != fmt.Sprint(want) {
		t.Errorf("left after flushing uplink 1: %v, want %v", left, want)
	}
	if n, err := f.FlushMark(0x10000, 0xff0000, inet.IPv4); err != nil || n != 0 {
		t.Errorf("second flush: %d, %v", n, err)
	}
}

// An uplink whose IPv6 failed loses its IPv6 entries only.
func TestFlushMarkOneFamily(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack CLI")
	}
	ns := nstest.New(t, "wpc6")
	insert(t, ns, "tcp", 1000, 30, 0x10000)
	ns.Run(t, "sh", "-c", `for p in $(seq 5000 5039); do conntrack -I -p tcp -s 2001:db8:1::10 -d 2001:db8:ff::10 --sport $p --dport 80 --state ESTABLISHED -t 300 --mark 65536 >/dev/null 2>&1 || exit 1; done`)
	ns.Run(t, "sh", "-c", `for p in $(seq 6000 6009); do conntrack -I -p tcp -s 2001:db8:1::10 -d 2001:db8:ff::10 --sport $p --dport 80 --state ESTABLISHED -t 300 --mark 131072 >/dev/null 2>&1 || exit 1; done`)
	f, err := New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.FlushMark(0x10000, 0xff0000, inet.IPv6)
	if err != nil || n != 40 {
		t.Fatalf("IPv6 flush of uplink 1: %d, %v; want 40", n, err)
	}
	out, _ := ns.Try("sh", "-c", "conntrack -L -f ipv4 2>/dev/null | grep -c mark=65536")
	if strings.TrimSpace(out) != "30" {
		t.Errorf("IPv4 entries of uplink 1 left: %s, want 30", out)
	}
	out, _ = ns.Try("sh", "-c", "conntrack -L -f ipv6 2>/dev/null | grep -c mark=131072")
	if strings.TrimSpace(out) != "10" {
		t.Errorf("IPv6 entries of uplink 2 left: %s, want 10", out)
	}
	if n, err := f.FlushMark(0x10000, 0xff0000, inet.IPv4); err != nil || n != 30 {
		t.Errorf("IPv4 flush of uplink 1: %d, %v; want 30", n, err)
	}
}

// A reload that moves wanpin's marks to other bits (mark_mask
// 0x7f000000 to 0x00ff0000): each uplink's entries get its new mark,
// other programs' bits outside both masks stay, bits in either mask that
// are not the old mark go (an entry the new table re-pinned to the first
// uplink before the move reached it: 0x02010000), and an entry of no
// uplink is left alone.
func TestRepinMaskChange(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack CLI")
	}
	ns := nstest.New(t, "wpr")
	insert(t, ns, "tcp", 1000, 10, 0x01000000) // uplink 1
	insert(t, ns, "tcp", 2000, 20, 0x02000000) // uplink 2
	insert(t, ns, "udp", 3000, 5, 0x02000001)  // uplink 2 + another program's bit
	insert(t, ns, "tcp", 4000, 3, 0x02010000)  // uplink 2, re-pinned to the new uplink 1 meanwhile
	insert(t, ns, "udp", 5000, 7, 0x1)         // not wanpin's
	ns.Run(t, "sh", "-c", `for p in $(seq 6000 6003); do conntrack -I -p tcp -s 2001:db8:1::10 -d 2001:db8:ff::10 --sport $p --dport 80 --state ESTABLISHED -t 300 --mark 33554432 >/dev/null 2>&1 || exit 1; done`)
	f, err := New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Repin(0x7f000000, 0x00ff0000, []Move{{Old: 0x01000000, New: 0x00010000}, {Old: 0x02000000, New: 0x00020000}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n) != "[10 32]" {
		t.Errorf("moved %v, want [10 32]", n)
	}
	want := map[string]int{
		fmt.Sprintf("mark=%d", 0x00010000): 10,
		fmt.Sprintf("mark=%d", 0x00020000): 27, // 20 + 3 + the 4 IPv6 ones
		fmt.Sprintf("mark=%d", 0x00020001): 5,
		"mark=1":                           7,
	}
	if got := count(t, ns); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the move: %v, want %v", got, want)
	}
	// Nothing is left with the old marks: a second move finds nothing.
	if n, err := f.Repin(0x7f000000, 0x00ff0000, []Move{{Old: 0x01000000, New: 0x00010000}}); err != nil || n[0] != 0 {
		t.Errorf("second move: %v, %v", n, err)
	}
}

// Uplinks swapped in the file swap their marks: every entry is moved
// once (dumped before any is changed), and a removed uplink's entries go.
func TestRepinSwapAndRemove(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack CLI")
	}
	ns := nstest.New(t, "wps")
	insert(t, ns, "tcp", 1000, 10, 0x01000000) // uplink 1, becomes 2
	insert(t, ns, "tcp", 2000, 20, 0x02000000) // uplink 2, becomes 1
	insert(t, ns, "udp", 3000, 6, 0x03000000)  // uplink 3, removed
	insert(t, ns, "udp", 4000, 2, 0x80000000)  // another program's bit, no uplink's
	f, err := New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Repin(0x7f000000, 0x7f000000, []Move{
		{Old: 0x01000000, New: 0x02000000}, {Old: 0x02000000, New: 0x01000000}, {Old: 0x03000000, Delete: true}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n) != "[10 20 6]" {
		t.Errorf("moved %v, want [10 20 6]", n)
	}
	want := map[string]int{fmt.Sprintf("mark=%d", 0x01000000): 20, fmt.Sprintf("mark=%d", 0x02000000): 10, fmt.Sprintf("mark=%d", uint32(0x80000000)): 2}
	if got := count(t, ns); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the swap: %v, want %v", got, want)
	}
	// The ports say which entry is which: uplink 1's (1000-1009) now
	// carry uplink 2's mark.
	out, _ := ns.Try("sh", "-c", "conntrack -L -p tcp --sport 1005 2>/dev/null")
	if !strings.Contains(out, fmt.Sprintf("mark=%d ", 0x02000000)) {
		t.Errorf("uplink 1's entry after the swap: %q", out)
	}
}

// Failback's eviction of IPv6 entries: the TCP ones get the evict mark,
// the UDP ones go. An update that carried the original tuple alone went
// out as IPv4 (the library takes the family from both tuples) and the
// kernel refused it (EINVAL).
func TestEvictIPv6(t *testing.T) {
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack CLI")
	}
	ns := nstest.New(t, "wpe6")
	ns.Run(t, "sh", "-c", `for p in $(seq 5000 5009); do conntrack -I -p tcp -s 2001:db8:1::10 -d 2001:db8:ff::10 --sport $p --dport 80 --state ESTABLISHED -t 300 --mark 65537 >/dev/null 2>&1 || exit 1; done`)
	ns.Run(t, "sh", "-c", `for p in $(seq 6000 6004); do conntrack -I -p udp -s 2001:db8:1::10 -d 2001:db8:ff::10 --sport $p --dport 53 -t 300 --mark 65536 >/dev/null 2>&1 || exit 1; done`)
	f, err := New(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reset, deleted, err := f.Evict(0x10000, 0xff0000, 0xff0000, inet.IPv6)
	if err != nil || reset != 10 || deleted != 5 {
		t.Fatalf("Evict: %d reset, %d deleted, %v; want 10, 5", reset, deleted, err)
	}
	// The other program's bit (0x1) is kept.
	if c := count(t, ns); c[fmt.Sprintf("mark=%d", 0xff0001)] != 10 || len(c) != 1 {
		t.Errorf("after the eviction: %v", c)
	}
}
