package mptcp

import (
	"fmt"
	"strings"
	"testing"
)

// TestKernelFailover is the behaviour the daemon depends on, one step at
// a time on one long download from the router: a second subflow over
// uplink 2 once both uplinks are endpoints; a backup uplink carrying no
// data; uplink 1's carrier loss survived once its endpoint is deleted;
// and what brings a subflow back.
func TestKernelFailover(t *testing.T) {
	l := newLab(t)
	l.serve(t)
	if _, _, err := RaiseLimits(l.c, 2); err != nil {
		t.Fatal(err)
	}
	l.sync(t, l.want)
	d := l.dial(t, true)

	// The first subflow leaves by the main table (uplink 1); the path
	// manager adds one from 198.51.100.1, which its source rule sends
	// out of wan2.
	l.subflows(t, "192.0.2.1:1 198.51.100.1:1")
	if n, err := Count(int(l.router.Handle)); err != nil || n.Connections != 1 {
		t.Errorf("Count() = %+v, %v; want one connection", n, err)
	}
	l.carries(t, d, "wan2", "both uplinks")

	// A worse tier: SET_FLAGS backup keeps the subflow (the same socket)
	// and tells the server (MP_PRIO), which stops sending on it.
	sub2 := l.socket(t, wan2Addr)
	backup := []Endpoint{l.want[0], l.want[1]}
	backup[1].Flags |= Backup
	if ch, err := Sync(l.c, backup); err != nil || len(ch.Applied) != 1 || ch.Applied[0].Kind != OpSetFlags {
		t.Fatalf("Sync to backup: %v, %v", ch.Applied, err)
	}
	waitFor(t, "the server to get MP_PRIO", func() (bool, string) {
		n := netstat(t, l.server)["MPTcpExt:MPPrioRx"]
		return n >= 1, fmt.Sprintf("%d MP_PRIO received", n)
	})
	flowing(t, d, 5<<20, "settling")
	if moved := l.received(t, d, 50<<20, "wan2 backup"); moved["wan2"] > 1<<20 {
		t.Errorf("wan2 as backup received %d bytes of 50 MB", moved["wan2"])
	}
	if got := l.socket(t, wan2Addr); got != sub2 {
		t.Errorf("the subflow changed with the backup flag: %q, then %q", sub2, got)
	}
	l.sync(t, l.want)

	// Uplink 1 loses carrier; the daemon deletes its endpoint. The
	// kernel closes the first subflow too (its address is the
	// endpoint's), and the download goes on over uplink 2 alone.
	l.server.Run(t, "ip", "link", "set", "u1", "down")
	l.sync(t, l.want[1:])
	l.subflows(t, "198.51.100.1:1")
	flowing(t, d, 20<<20, "uplink 1 lost")

	// Uplink 1 returns and its endpoint is added again: the kernel opens
	// a new subflow from it on the existing connection.
	l.server.Run(t, "ip", "link", "set", "u1", "up")
	waitFor(t, "wan1 carrier", func() (bool, string) {
		s, _ := l.router.Try("cat", "/sys/class/net/wan1/carrier")
		return s == "1\n", s
	})
	l.sync(t, l.want)
	l.subflows(t, "192.0.2.1:1 198.51.100.1:1")
	l.carries(t, d, "wan1", "uplink 1 back")

	// A subflow that dies while its endpoint stays (here killed, as a
	// middlebox's reset would) is not opened again by the kernel, not
	// even after 50 MB more on the connection. (If a kernel ever does,
	// Refresh is merely redundant and this check can go.)
	l.router.Run(t, "ss", "-K", "-tn", "src", wan2Addr)
	l.subflows(t, "192.0.2.1:1")
	flowing(t, d, 50<<20, "uplink 2's subflow killed")
	n, err := Count(int(l.router.Handle))
	if err != nil {
		t.Fatal(err)
	}
	if got := countsText(n); got != "192.0.2.1:1" {
		t.Errorf("after the kill and 50 MB, subflows %s", got)
	}
	eps, err := l.c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	orphans := Orphaned(eps, n)
	if len(orphans) != 1 || orphans[0].Addr.String() != wan2Addr {
		t.Fatalf("Orphaned = %v, want uplink 2's endpoint", orphans)
	}
	// Deleting and adding the endpoint again does.
	if err := Refresh(l.c, orphans[0]); err != nil {
		t.Fatal(err)
	}
	l.subflows(t, "192.0.2.1:1 198.51.100.1:1")
	l.carries(t, d, "wan2", "after Refresh")
	if err := d.Conn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-d.Done; err != nil {
		t.Errorf("the download: %v", err)
	}
}

// received waits for n more bytes and returns how many each uplink
// received meanwhile.
func (l *lab) received(t *testing.T, d *download, n int64, what string) map[string]int64 {
	t.Helper()
	r1, r2 := rxBytes(t, l.router, "wan1"), rxBytes(t, l.router, "wan2")
	flowing(t, d, n, what)
	m := map[string]int64{"wan1": rxBytes(t, l.router, "wan1") - r1, "wan2": rxBytes(t, l.router, "wan2") - r2}
	t.Logf("%s: wan1 received %d, wan2 %d bytes", what, m["wan1"], m["wan2"])
	return m
}

// carries waits until dev has received 1 MB more while the download
// runs. A new subflow starts slow next to one at full speed on an
// unshaped veth: how soon it gets its share is the scheduler's business,
// that it gets data at all is the point.
func (l *lab) carries(t *testing.T, d *download, dev, what string) {
	t.Helper()
	start, b := rxBytes(t, l.router, dev), d.Bytes.Load()
	got := waitFor(t, what+": "+dev+" carrying data", func() (bool, string) {
		select {
		case err := <-d.Done:
			t.Fatalf("%s: the download ended: %v", what, err)
		default:
		}
		n := rxBytes(t, l.router, dev) - start
		return n >= 1<<20, fmt.Sprintf("%d bytes received on %s, %d read in all", n, dev, d.Bytes.Load()-b)
	})
	t.Logf("%s: %s", what, got)
}

// socket is the established TCP socket from addr, as ss prints it
// (local and peer address and port).
func (l *lab) socket(t *testing.T, addr string) string {
	t.Helper()
	out := strings.Fields(l.router.Run(t, "ss", "-Htn", "state", "established", "src", addr))
	if len(out) < 4 {
		t.Fatalf("no established socket from %s: %q", addr, out)
	}
	return strings.Join(out[2:4], " ")
}
