package rtnl

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/nstest"
	"github.com/wanpin/wanpin/pkg/core"
)

// TestFibType: a lookup's answer read as the fib expression reads the
// address, per family.
func TestFibType(t *testing.T) {
	a := netip.MustParseAddr
	cases := []struct {
		dst   string
		typ   uint8
		table uint32
		want  core.AddrType
	}{
		{"192.0.2.1", unix.RTN_LOCAL, unix.RT_TABLE_LOCAL, core.AddrLocal},
		{"192.0.2.63", unix.RTN_BROADCAST, unix.RT_TABLE_LOCAL, core.AddrBroadcast},
		{"203.0.113.10", unix.RTN_UNICAST, unix.RT_TABLE_MAIN, core.AddrUnicast},
		// A local route in a table of its own (TPROXY's): IPv4's fib
		// looks in the local table alone.
		{"198.51.100.5", unix.RTN_LOCAL, 100, core.AddrUnicast},
		{"203.0.113.10", unix.RTN_BLACKHOLE, 100, core.AddrUnicast},
		{"2001:db8:1::1", unix.RTN_LOCAL, unix.RT_TABLE_LOCAL, core.AddrLocal},
		// IPv6's fib takes the whole lookup: local from any table.
		{"2001:db8:77::5", unix.RTN_LOCAL, 100, core.AddrLocal},
		{"2001:db8:1::", unix.RTN_ANYCAST, unix.RT_TABLE_LOCAL, core.AddrAnycast},
		{"2001:db8:ff::10", unix.RTN_UNICAST, unix.RT_TABLE_MAIN, core.AddrUnicast},
	}
	for _, c := range cases {
		if got := fibType(a(c.dst), c.typ, c.table); got != c.want {
			t.Errorf("%s type %d table %d: %v, want %v", c.dst, c.typ, c.table, got, c.want)
		}
	}
	for _, c := range []struct {
		dst   string
		errno unix.Errno
		want  core.AddrType
		ok    bool
	}{
		{"203.0.113.10", unix.ENETUNREACH, core.AddrUnicast, true},
		{"2001:db8:ff::10", unix.ENETUNREACH, core.AddrUnreachable, true},
		{"2001:db8:ff::10", unix.EACCES, core.AddrUnreachable, true},
		{"203.0.113.10", unix.ENOBUFS, 0, false},
	} {
		if got, ok := lookupFailed(a(c.dst), c.errno); got != c.want || ok != c.ok {
			t.Errorf("%s %v: %v %v, want %v %v", c.dst, c.errno, got, ok, c.want, c.ok)
		}
	}
}

// TestAddrTypeKernel asks a namespace's kernel: addresses on any
// interface (one no uplink is, added last), broadcasts, anycast, a
// local route in another table, and destinations with no route.
func TestAddrTypeKernel(t *testing.T) {
	ns := nstest.New(t, "wat")
	ns.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	for _, c := range [][]string{
		{"link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"}, {"link", "set", "lan0", "up"}, {"link", "set", "lan0p", "up"},
		{"addr", "add", "192.0.2.1/26", "dev", "lan0"},
		{"addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad"},
		{"link", "add", "lan2", "type", "veth", "peer", "name", "lan2p"}, {"link", "set", "lan2", "up"}, {"link", "set", "lan2p", "up"},
		{"addr", "add", "192.0.2.65/26", "dev", "lan2"},
		{"addr", "add", "2001:db8:2::1/64", "dev", "lan2", "nodad"},
		{"route", "add", "local", "198.51.100.0/24", "dev", "lo", "table", "100"},
		{"-6", "route", "add", "local", "2001:db8:77::/64", "dev", "lo", "table", "100"},
		{"rule", "add", "pref", "50", "lookup", "100"},
		{"-6", "rule", "add", "pref", "50", "lookup", "100"},
	} {
		ns.Run(t, append([]string{"ip"}, c...)...)
	}
	want := map[string]core.AddrType{
		"192.0.2.1":       core.AddrLocal,
		"192.0.2.65":      core.AddrLocal,
		"127.0.0.1":       core.AddrLocal,
		"192.0.2.63":      core.AddrBroadcast,
		"192.0.2.127":     core.AddrBroadcast,
		"192.0.2.10":      core.AddrUnicast,
		"203.0.113.10":    core.AddrUnicast, // no route at all
		"198.51.100.5":    core.AddrUnicast, // local in table 100 only
		"255.255.255.255": core.AddrBroadcast,
		"224.0.0.251":     core.AddrMulticast,
		"2001:db8:1::1":   core.AddrLocal,
		"2001:db8:2::1":   core.AddrLocal,
		"::1":             core.AddrLocal,
		"2001:db8:1::":    core.AddrAnycast,
		"2001:db8:1::10":  core.AddrUnicast,
		"2001:db8:77::5":  core.AddrLocal,
		"2001:db8:ff::10": core.AddrUnreachable,
		"ff02::1":         core.AddrMulticast,
		"fe80::1":         core.AddrUnicast, // left to the chains' fe80::/10 return
	}
	err := nstest.Do(int(ns.Handle), func() error {
		for addr, w := range want {
			got, err := AddrType(netip.MustParseAddr(addr))
			if err != nil {
				t.Errorf("%s: %v", addr, err)
			} else if got != w {
				t.Errorf("%s: %v, want %v", addr, got, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAddrType is what explain adds per call: one route lookup.
func BenchmarkAddrType(b *testing.B) {
	ns := nstest.New(b, "wat")
	ns.Run(b, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
	ns.Run(b, "ip", "link", "set", "lan0", "up")
	ns.Run(b, "ip", "addr", "add", "192.0.2.1/26", "dev", "lan0")
	dst := netip.MustParseAddr("192.0.2.1")
	err := nstest.Do(int(ns.Handle), func() error {
		for b.Loop() {
			if _, err := AddrType(dst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
