package mptcp

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/nstest"
	"golang.org/x/sys/unix"
)

// newNS is a namespace with MPTCP on and a veth pair a0-b0, with
// 192.0.2.1-3 and 2001:db8::1 on a0 (endpoints need no route, only an
// ifindex to point at).
func newNS(t *testing.T) (*nstest.NS, *Client) {
	t.Helper()
	ns := nstest.New(t, "wmp")
	ns.Run(t, "sysctl", "-qw", "net.mptcp.enabled=1")
	ns.Run(t, "ip", "link", "add", "a0", "type", "veth", "peer", "name", "b0")
	ns.Run(t, "ip", "link", "set", "a0", "up")
	ns.Run(t, "ip", "link", "set", "b0", "up")
	for _, a := range []string{"192.0.2.1/24", "192.0.2.2/24", "192.0.2.3/24", "2001:db8::1/64"} {
		ns.Run(t, "ip", "addr", "add", a, "dev", "a0", "nodad")
	}
	c, err := Dial(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ns, c
}

func ifindex(t *testing.T, ns *nstest.NS, dev string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(ns.Run(t, "cat", "/sys/class/net/"+dev+"/ifindex")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestKernelRoundTrip(t *testing.T) {
	ns, c := newNS(t)
	idx := ifindex(t, ns, "a0")
	want := []Endpoint{
		{ID: 201, Addr: netip.MustParseAddr("192.0.2.1"), Ifindex: idx, Flags: Subflow},
		{ID: 202, Addr: netip.MustParseAddr("2001:db8::1"), Ifindex: idx, Flags: Subflow | Backup},
		{ID: 203, Addr: netip.MustParseAddr("192.0.2.2"), Flags: Signal},
	}
	for _, e := range want {
		if err := c.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Endpoints() = %v, want %v", got, want)
	}
	if out := ns.Run(t, "ip", "mptcp", "endpoint", "show"); !strings.Contains(out, "2001:db8::1 id 202 subflow backup dev a0") {
		t.Errorf("ip mptcp endpoint show:\n%s", out)
	}
	// The kernel's refusals, wrapped.
	if err := c.Add(Endpoint{ID: 210, Addr: want[0].Addr, Flags: Subflow}); !errors.Is(err, unix.EEXIST) {
		t.Errorf("adding an address twice: %v, want EEXIST", err)
	}
	if err := c.Add(Endpoint{ID: 201, Addr: netip.MustParseAddr("192.0.2.3"), Flags: Subflow}); !errors.Is(err, unix.EBUSY) {
		t.Errorf("adding an ID twice: %v, want EBUSY", err)
	}
	if err := c.Delete(201); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(201); err == nil || !strings.Contains(err.Error(), "deleting MPTCP endpoint id 201") {
		t.Errorf("deleting a missing endpoint: %v", err)
	}
	got, _ = c.Endpoints()
	if !slices.Equal(got, want[1:]) {
		t.Errorf("after delete: %v, want %v", got, want[1:])
	}

	l, err := c.Limits()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a new namespace's limits: %+v", l)
	if err := c.SetLimits(Limits{Subflows: 3, AddAddrAccepted: 4}); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.Limits(); l != (Limits{Subflows: 3, AddAddrAccepted: 4}) {
		t.Errorf("limits %+v after setting 3 and 4", l)
	}
	if out := ns.Run(t, "ip", "mptcp", "limits", "show"); !strings.Contains(out, "add_addr_accepted 4 subflows 3") {
		t.Errorf("ip mptcp limits show: %s", out)
	}
	if err := c.SetLimits(Limits{Subflows: maxLimit + 1}); !errors.Is(err, unix.EINVAL) {
		t.Errorf("limit 9: %v, want EINVAL", err)
	}
}

// TestKernelCount counts connections made inside one namespace: both
// ends are local, so each subflow is counted twice (client and server
// socket), and a dual-stack listener's IPv4-mapped side is unmapped.
func TestKernelCount(t *testing.T) {
	ns, _ := newNS(t)
	var ln net.Listener
	var conns []net.Conn
	inNS(t, ns, func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		if ln, err = lc.Listen(context.Background(), "tcp", "[::]:7000"); err != nil {
			return err
		}
		var d net.Dialer
		d.SetMultipathTCP(true)
		for _, a := range []string{"192.0.2.1:7000", "[2001:db8::1]:7000"} {
			c, err := d.Dial("tcp", a)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	defer ln.Close()
	for range conns {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	n, err := Count(int(ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]int{netip.MustParseAddr("192.0.2.1"): 2, netip.MustParseAddr("2001:db8::1"): 2}
	if !maps.Equal(n.Subflows, want) || n.Connections != 4 {
		t.Errorf("Count() = %+v, want subflows %v and 4 connections", n, want)
	}
}
