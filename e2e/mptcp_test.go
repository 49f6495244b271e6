package e2e

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/internal/nstest"
)

const mptcpPort = 5301

// nsFD opens the lab namespace ns for nstest's helpers, until the test
// ends.
func nsFD(t *testing.T, ns string) int {
	t.Helper()
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// serveZeros sends zeros to every connection to the server's mptcpPort
// (MPTCP or plain TCP, either family).
func serveZeros(t *testing.T, l *netlab.Lab) {
	t.Helper()
	nstest.ServeZeros(t, nsFD(t, l.Server), net.JoinHostPort("::", strconv.Itoa(mptcpPort)))
}

// startDownload reads from the server's mptcpPort at dst, from ns.
func startDownload(t *testing.T, l *netlab.Lab, ns, dst string, mptcp bool) *nstest.Download {
	t.Helper()
	return startDownloadFrom(t, l, ns, "", dst, mptcp)
}

// startDownloadFrom is startDownload from the source address src ("":
// the kernel's choice).
func startDownloadFrom(t *testing.T, l *netlab.Lab, ns, src, dst string, mptcp bool) *nstest.Download {
	t.Helper()
	return nstest.StartDownload(t, nsFD(t, ns), src, net.JoinHostPort(dst, strconv.Itoa(mptcpPort)), mptcp)
}

// rateFrom downloads for a while from src in ns and returns Mbit/s.
func rateFrom(t *testing.T, l *netlab.Lab, ns, src, dst string, mptcp bool, n int64) float64 {
	t.Helper()
	d := startDownloadFrom(t, l, ns, src, dst, mptcp)
	d.More(t, 512<<10, 30*time.Second, "warm-up") // slow start, and the second subflow's join
	start, from := time.Now(), d.Bytes.Load()
	d.More(t, n, 30*time.Second, "measured download")
	mbit := float64(d.Bytes.Load()-from) * 8 / time.Since(start).Seconds() / 1e6
	d.Abort()
	return mbit
}

// sideBySide measures MPTCP and plain TCP downloads in turn (the order
// swapped every cycle) and returns the median ratio.
func sideBySide(t *testing.T, l *netlab.Lab, ns, src, dst string) float64 {
	t.Helper()
	var ratios []float64
	for c := range 4 {
		var mp, plain float64
		if c%2 == 0 {
			mp, plain = rateFrom(t, l, ns, src, dst, true, 8<<20), rateFrom(t, l, ns, src, dst, false, 4<<20)
		} else {
			plain, mp = rateFrom(t, l, ns, src, dst, false, 4<<20), rateFrom(t, l, ns, src, dst, true, 8<<20)
		}
		t.Logf("cycle %d: MPTCP %.1f Mbit/s, plain TCP %.1f Mbit/s", c+1, mp, plain)
		ratios = append(ratios, mp/plain)
	}
	slices.Sort(ratios)
	return (ratios[1] + ratios[2]) / 2
}

// rxBytes reads dev's received bytes in the router (from /proc/net/dev,
// which is the reader's namespace's: /sys stays the machine's under
// nsenter).
func rxBytes(t *testing.T, l *netlab.Lab, dev string) int64 {
	t.Helper()
	for _, line := range strings.Split(run(t, l, l.Router, "cat", "/proc/net/dev"), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || name != dev {
			continue
		}
		f := strings.Fields(rest)
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatalf("no %s in the router's /proc/net/dev", dev)
	return 0
}

// carries waits until dev has received n more bytes.
func carries(t *testing.T, l *netlab.Lab, dev string, n int64, what string) {
	t.Helper()
	start := rxBytes(t, l, dev)
	waitUntil(t, 30*time.Second, what, func() (bool, string) {
		got := rxBytes(t, l, dev) - start
		return got >= n, fmt.Sprintf("%s received %d bytes", dev, got)
	})
}

const mptcpWanpin = `mptcp = true

[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"
`

// TestMPTCP: with mptcp = true, each uplink's address is an MPTCP
// endpoint, so one download of the router's from an MPTCP server uses
// both uplinks (ISPs shaped to 40 Mbit/s each): measured side by side
// with plain TCP, interleaved. When uplink 1 loses carrier the download
// goes on over uplink 2 without an error, and uses uplink 1 again once
// it is back. Status and metrics show endpoints and subflows; plain
// connections are balanced as before.
func TestMPTCP(t *testing.T) {
	l := newLab(t, 2)
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "40mbit", "burst", "32kb", "latency", "20ms")
	}
	serveZeros(t, l)
	// An admin's endpoint with an ID in wanpin's block (200..255): the
	// kernel keeps no owner, wanpin's record of what it added does.
	run(t, l, l.Router, "ip", "mptcp", "endpoint", "add", netlab.LANRouter4, "id", "250", "signal")
	d := startWanpin(t, l, mptcpWanpin)
	d.waitFor("mptcp endpoints", 1, 5*time.Second)
	if out := run(t, l, l.Router, "ip", "mptcp", "endpoint", "show"); !strings.Contains(out, netlab.UplinkAddr4(1)) || !strings.Contains(out, netlab.UplinkAddr4(2)) ||
		!strings.Contains(out, netlab.LANRouter4+" id 250 signal") {
		t.Fatalf("endpoints:\n%s", out)
	}

	// Side by side, interleaved, the order swapped every cycle.
	median := sideBySide(t, l, l.Router, "", netlab.ServerAddr4)
	t.Logf("MPTCP / plain TCP, median of 4 cycles: %.2f (two uplinks of 40 Mbit/s)", median)
	if median < 1.3 {
		t.Errorf("MPTCP got %.2f times plain TCP's rate, want well above one uplink's (1.3 at least)", median)
	}

	// Failover in the middle of a download.
	dl := startDownload(t, l, l.Router, netlab.ServerAddr4, true)
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the MPTCP download")
	carries(t, l, "wan2", 1<<20, "uplink 2 carrying the MPTCP download")
	s := statusOf(t, d)
	for _, u := range s.Uplinks {
		if u.MPTCP == nil || u.MPTCP.Endpoints == 0 {
			t.Errorf("status of %s: mptcp %+v", u.Name, u.MPTCP)
		}
	}
	if err := l.SetCarrier(1, false); err != nil {
		t.Fatal(err)
	}
	dl.More(t, 4<<20, 30*time.Second, "the download after uplink 1 lost carrier")
	if err := l.SetCarrier(1, true); err != nil {
		t.Fatal(err)
	}
	carries(t, l, "wan1", 1<<20, "uplink 1 carrying the download again after its return")
	dl.More(t, 1<<20, 30*time.Second, "the download after uplink 1 came back")
	// A subflow reset while its uplink stays up (a middlebox's reset):
	// the kernel never opens it again by itself; the daemon refreshes the
	// endpoint that has no subflow left.
	run(t, l, l.Router, "ss", "-K", "-tn", "src", netlab.UplinkAddr4(2))
	carries(t, l, "wan2", 1<<20, "uplink 2 carrying the download again after its subflow was reset")
	d.waitFor("mptcp endpoint refreshed", 1, 5*time.Second)
	dl.More(t, 1<<20, 30*time.Second, "the download after the refresh")
	waitUntil(t, 15*time.Second, "status to count subflows on both uplinks", func() (bool, string) {
		s := statusOf(t, d)
		var seen []string
		ok := true
		for _, u := range s.Uplinks {
			if u.MPTCP == nil || u.MPTCP.Subflows == 0 {
				ok = false
			}
			seen = append(seen, fmt.Sprintf("%s %+v", u.Name, u.MPTCP))
		}
		return ok && s.MPTCPConnections > 0, strings.Join(seen, ", ")
	})
	if out, _ := d.cli(0, "status"); !strings.Contains(out, "mptcp: 2 endpoints") {
		t.Errorf("status text:\n%s", out)
	}
	dl.Abort()

	// Plain connections: balanced over both, as without MPTCP.
	counts, err := l.CurlMany(40)
	if err != nil {
		t.Fatal(err)
	}
	if counts[1] == 0 || counts[2] == 0 {
		t.Errorf("40 plain connections by ISP %v, want both used", counts)
	}

	// A clean stop removes wanpin's endpoints.
	d.stop(unix.SIGTERM)
	if out := strings.TrimSpace(run(t, l, l.Router, "ip", "mptcp", "endpoint", "show")); out != netlab.LANRouter4+" id 250 signal" {
		t.Errorf("endpoints after stop: %q, want only the admin's", out)
	}
}

// TestMPTCPLANHost6: a LAN host with an address in each uplink's IPv6
// prefix (nat6 = "none") and an MPTCP endpoint for its second one: its
// download from the server has a subflow from each address, each routed
// by its source prefix through its own uplink (shaped to 40 Mbit/s), so
// it gets the two uplinks' rate; the router's MPTCP endpoints play no
// part, its routing does.
func TestMPTCPLANHost6(t *testing.T) {
	l := newLab(t, 2)
	if err := l.AddLANPrefixes(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "tc", "qdisc", "add", "dev", "cust", "root", "tbf", "rate", "40mbit", "burst", "32kb", "latency", "20ms")
	}
	serveZeros(t, l)
	startWanpin(t, l, "mptcp = true\n"+dualConfig("none", 1, 1))
	// The LAN host's own path manager: a subflow from its second address.
	run(t, l, l.LAN, "ip", "mptcp", "limits", "set", "subflows", "2")
	run(t, l, l.LAN, "ip", "mptcp", "endpoint", "add", netlab.LANHostIn6(2), "dev", "eth0", "subflow")
	median := sideBySide(t, l, l.LAN, netlab.LANHostIn6(1), netlab.ServerAddr6)
	t.Logf("a LAN host's MPTCP / plain TCP over IPv6, median of 4 cycles: %.2f (two uplinks of 40 Mbit/s)", median)
	if median < 1.3 {
		t.Errorf("the LAN host's MPTCP got %.2f times plain TCP's rate, want 1.3 at least", median)
	}
}
