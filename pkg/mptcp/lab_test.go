package mptcp

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/nstest"
)

// The lab: the router has two uplinks, each straight to the server (the
// server's end of each veth plays the ISP: setting it down is the
// router's carrier loss). Each uplink has its own table and source rule,
// as wanpin writes them; the main table's default is uplink 1.
//
//	router wan1 192.0.2.1/24    --- u1 192.0.2.2/24    server
//	router wan2 198.51.100.1/24 --- u2 198.51.100.2/24 server, 203.0.113.1 on lo
const (
	wan1Addr   = "192.0.2.1"
	wan2Addr   = "198.51.100.1"
	serverAddr = "203.0.113.1"
	serverPort = 5201
)

type lab struct {
	router, server *nstest.NS
	c              *Client
	want           []Endpoint // both uplinks as subflow endpoints
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{router: nstest.New(t, "wmp"), server: nstest.New(t, "wmp")}
	r, s := l.router, l.server
	r.Run(t, "ip", "link", "add", "wan1", "type", "veth", "peer", "name", "u1", "netns", s.Name)
	r.Run(t, "ip", "link", "add", "wan2", "type", "veth", "peer", "name", "u2", "netns", s.Name)
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.mptcp.enabled=1"},
		{"ip", "addr", "add", wan1Addr + "/24", "dev", "wan1"},
		{"ip", "addr", "add", wan2Addr + "/24", "dev", "wan2"},
		{"ip", "link", "set", "wan1", "up"},
		{"ip", "link", "set", "wan2", "up"},
		{"ip", "route", "add", "default", "via", "192.0.2.2", "dev", "wan1"},
		{"ip", "route", "add", "default", "via", "192.0.2.2", "dev", "wan1", "table", "101"},
		{"ip", "route", "add", "default", "via", "198.51.100.2", "dev", "wan2", "table", "102"},
		{"ip", "rule", "add", "from", wan1Addr, "lookup", "101", "priority", "1001"},
		{"ip", "rule", "add", "from", wan2Addr, "lookup", "102", "priority", "1002"},
	} {
		r.Run(t, c...)
	}
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.mptcp.enabled=1"},
		// Like two ISPs' routers: a packet whose source belongs to the
		// other uplink is dropped (BCP 38), and ARP is answered only for
		// the address of the link asked on. Without these the server
		// accepts a subflow that left by the wrong uplink.
		{"sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"},
		{"sysctl", "-qw", "net.ipv4.conf.default.rp_filter=1"},
		{"sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"},
		{"ip", "addr", "add", "192.0.2.2/24", "dev", "u1"},
		{"ip", "addr", "add", "198.51.100.2/24", "dev", "u2"},
		{"ip", "addr", "add", serverAddr + "/32", "dev", "lo"},
		{"ip", "link", "set", "u1", "up"},
		{"ip", "link", "set", "u2", "up"},
	} {
		s.Run(t, c...)
	}
	c, err := Dial(int(r.Handle))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l.c = c
	l.want = []Endpoint{
		{Addr: netip.MustParseAddr(wan1Addr), Ifindex: ifindex(t, r, "wan1"), Flags: Subflow},
		{Addr: netip.MustParseAddr(wan2Addr), Ifindex: ifindex(t, r, "wan2"), Flags: Subflow},
	}
	return l
}

// inNS runs f on a thread moved into ns (nstest.Do): sockets f creates
// stay there.
func inNS(t *testing.T, ns *nstest.NS, f func() error) {
	t.Helper()
	if err := nstest.Do(int(ns.Handle), f); err != nil {
		t.Fatal(err)
	}
}

// serve sends zeros to every connection to the server (nstest.ServeZeros).
func (l *lab) serve(t *testing.T) {
	t.Helper()
	nstest.ServeZeros(t, int(l.server.Handle), net.JoinHostPort(serverAddr, strconv.Itoa(serverPort)))
}

// download is a connection from the router to the server, read by a
// goroutine that counts the bytes until it ends.
type download = nstest.Download

func (l *lab) dial(t *testing.T, mptcp bool) *download {
	t.Helper()
	return nstest.StartDownload(t, int(l.router.Handle), "", net.JoinHostPort(serverAddr, strconv.Itoa(serverPort)), mptcp)
}

// flowing waits until d has read n more bytes, failing if it ends.
func flowing(t *testing.T, d *download, n int64, what string) {
	t.Helper()
	d.More(t, n, 20*time.Second, what+": bytes flowing")
}

// waitFor polls cond until it holds, or fails after a generous bound
// (the bound is a safety net, not a measurement).
func waitFor(t *testing.T, what string, cond func() (bool, string)) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return state
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subflows waits until the router's established subflows by local
// address are want (as "addr:n" sorted text, "" for none).
func (l *lab) subflows(t *testing.T, want string) {
	t.Helper()
	waitFor(t, "subflows "+want, func() (bool, string) {
		n, err := Count(int(l.router.Handle))
		if err != nil {
			t.Fatal(err)
		}
		got := countsText(n)
		return got == want, got
	})
}

func countsText(n Counts) string {
	var s []string
	for _, a := range []string{wan1Addr, wan2Addr} {
		if k := n.Subflows[netip.MustParseAddr(a)]; k > 0 {
			s = append(s, fmt.Sprintf("%s:%d", a, k))
		}
	}
	return strings.Join(s, " ")
}

func (l *lab) sync(t *testing.T, want []Endpoint) {
	t.Helper()
	if _, err := Sync(l.c, want); err != nil {
		t.Fatal(err)
	}
}

func rxBytes(t *testing.T, ns *nstest.NS, dev string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(strings.TrimSpace(ns.Run(t, "cat", "/sys/class/net/"+dev+"/statistics/rx_bytes")), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
