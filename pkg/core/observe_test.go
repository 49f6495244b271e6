package core

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/inet"
)

func addr(p string) Addr { return Addr{Prefix: netip.MustParsePrefix(p)} }

func TestObserve(t *testing.T) {
	dhcp := config.Uplink{Name: "cable", Interface: "wan1"}
	ppp := config.Uplink{Name: "dsl", Interface: "ppp0"}
	fixed := config.Uplink{Name: "lte", Interface: "wwan0", Gateway4: netip.MustParseAddr("198.51.100.17")}
	good := Link{Name: "wan1", Exists: true, AdminUp: true, Carrier: true,
		Addrs: []Addr{addr("198.51.100.2/29")}, Gateway: inet.PerFamily[netip.Addr]{netip.MustParseAddr("198.51.100.1")}}
	cases := []struct {
		name   string
		u      config.Uplink
		l      Link
		up     bool
		gw     string
		p2p    bool
		reason string
	}{
		{"dhcp up", dhcp, good, true, "198.51.100.1", false, "gateway 198.51.100.1 from the main table"},
		{"missing", ppp, Link{Name: "ppp0"}, false, "", false, "does not exist"},
		{"no carrier", dhcp, func() Link { l := good; l.Carrier = false; return l }(), false, "", false, "no carrier"},
		{"admin down", dhcp, func() Link { l := good; l.AdminUp = false; return l }(), false, "", false, "administratively down"},
		{"no address", dhcp, func() Link { l := good; l.Addrs = nil; return l }(), false, "", false, "no IPv4 address"},
		{"no gateway", dhcp, func() Link { l := good; *l.Gateway.Of(inet.IPv4) = netip.Addr{}; return l }(), false, "", false, "no IPv4 gateway known"},
		{"ppp peer", ppp, Link{Name: "ppp0", Exists: true, AdminUp: true, Carrier: true, PointToPoint: true,
			Addrs: []Addr{{Prefix: netip.MustParsePrefix("198.51.100.10/32"), Peer: netip.MustParseAddr("198.51.100.9")}}},
			true, "", true, "point-to-point peer 198.51.100.9"},
		{"configured gateway wins", fixed, func() Link { l := good; l.Name = "wwan0"; return l }(), true, "198.51.100.17", false, "configured gateway"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, rs := Observe(c.u, c.l, Hint{}, nil)
			reason := oneReason(rs, st)
			if st.Up() != c.up || !strings.Contains(reason, c.reason) {
				t.Fatalf("up=%v reason=%q; want up=%v reason containing %q", st.Up(), reason, c.up, c.reason)
			}
			if c.up && (st.Family(inet.IPv4).Gateway.String() != c.gw && c.gw != "" || st.Family(inet.IPv4).PointToPoint != c.p2p) {
				t.Errorf("gateway %v p2p %v; want %s %v", st.Family(inet.IPv4).Gateway, st.Family(inet.IPv4).PointToPoint, c.gw, c.p2p)
			}
		})
	}
	// A down link keeps its addresses, so its `from` rules stay.
	l := good
	l.Carrier = false
	if st, _ := Observe(dhcp, l, Hint{}, nil); len(st.Family(inet.IPv4).Addrs) != 1 || st.Family(inet.IPv4).Up {
		t.Errorf("no carrier: %+v", st.Family(inet.IPv4))
	}
	// PPP hooks: ip-up's peer makes a plain interface point-to-point,
	// ip-down takes it down before netlink does.
	veth := Link{Name: "ppp0", Exists: true, AdminUp: true, Carrier: true, Addrs: []Addr{addr("198.51.100.10/32")}}
	if st, _ := Observe(ppp, veth, Hint{}, nil); st.Up() {
		t.Error("no gateway and no hint: up")
	}
	st, rs := Observe(ppp, veth, Hint{Peer: netip.MustParseAddr("198.51.100.9")}, nil)
	if reason := oneReason(rs, st); !st.Up() || st.Family(inet.IPv4).Gateway.String() != "198.51.100.9" || !st.Family(inet.IPv4).OnLink || !strings.Contains(reason, "198.51.100.9") {
		t.Errorf("ip-up hint: %+v %q", st.Family(inet.IPv4), reason)
	}
	if st, rs := Observe(ppp, veth, Hint{Down: true}, nil); st.Up() || !strings.Contains(oneReason(rs, st), "ip-down") {
		t.Errorf("ip-down hint: up=%v %q", st.Up(), oneReason(rs, st))
	}
}

// Each family is up or down on its own, with its own reason.
func TestObservePerFamily(t *testing.T) {
	u := config.Uplink{Name: "fibre", Interface: "wan1"}
	l := Link{Name: "wan1", Exists: true, AdminUp: true, Carrier: true,
		Addrs:   []Addr{addr("198.51.100.2/29"), addr("2001:db8:101::2/64")},
		Gateway: inet.PerFamily[netip.Addr]{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("fe80::1")}}
	st, rs := Observe(u, l, Hint{}, nil)
	if !st.Family(inet.IPv4).Usable() || !st.Family(inet.IPv6).Usable() || st.Family(inet.IPv6).Gateway.String() != "fe80::1" ||
		!strings.Contains(rs.Get(inet.IPv6), "gateway fe80::1 from the main table") {
		t.Fatalf("dual stack: %+v %+v", st, rs)
	}
	// The RA's default route expires: IPv6 down, IPv4 untouched.
	*l.Gateway.Of(inet.IPv6) = netip.Addr{}
	st, rs = Observe(u, l, Hint{}, nil)
	if !st.Family(inet.IPv4).Up || st.Family(inet.IPv6).Up || !strings.Contains(rs.Get(inet.IPv6), "no IPv6 gateway") || !strings.Contains(rs.Get(inet.IPv4), "198.51.100.2") {
		t.Errorf("IPv6 gateway gone: %+v %+v", st, rs)
	}
	if s := oneReason(rs, st); !strings.Contains(s, "IPv4 198.51.100.2") || !strings.Contains(s, "no IPv6 gateway") {
		t.Errorf("combined reason %q", s)
	}
	// The IPv4 address goes (DHCP lease lost), IPv6 stays.
	*l.Gateway.Of(inet.IPv6) = netip.MustParseAddr("fe80::1")
	l.Addrs = l.Addrs[1:]
	st, rs = Observe(u, l, Hint{}, nil)
	if st.Family(inet.IPv4).Up || !st.Family(inet.IPv6).Up || !strings.Contains(rs.Get(inet.IPv4), "no IPv4 address") {
		t.Errorf("IPv4 address gone: %+v %+v", st, rs)
	}
	// A configured link-local gateway6 needs no RA.
	u.Gateway6 = netip.MustParseAddr("fe80::1")
	*l.Gateway.Of(inet.IPv6) = netip.Addr{}
	if st, _ := Observe(u, l, Hint{}, nil); !st.Family(inet.IPv6).Up || st.Family(inet.IPv6).Gateway != u.Gateway6 {
		t.Errorf("configured gateway6: %+v", st.Family(inet.IPv6))
	}
}
