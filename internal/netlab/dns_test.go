package netlab

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// routeFrom sends the router's traffic from src out of wan<i> (a rule and
// a table of its own), so a test can ask a resolver through either ISP.
func routeFrom(t *testing.T, l *Lab, i int, src string) {
	t.Helper()
	fam, gw := "-4", UplinkGateway4(i)
	if strings.Contains(src, ":") {
		fam, gw = "-6", UplinkGateway6(i)
	}
	table := fmt.Sprint(200 + i)
	out, err := l.Exec(l.Router, "sh", "-c", fmt.Sprintf(
		"ip %[1]s rule add from %[2]s lookup %[3]s && ip %[1]s route replace default via %[4]s dev wan%[5]d table %[3]s",
		fam, src, table, gw, i))
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// TestResolvers: resolver i answers its own customer, through ISP i, in
// both families; a query from the router's address at the other ISP gets
// there through the lab's core and is dropped: it times out.
func TestResolvers(t *testing.T) {
	l := newDHCPLab(t, Options{Resolvers: true})
	for i := 1; i <= 2; i++ {
		routeFrom(t, l, i, UplinkAddr4(i))
		routeFrom(t, l, i, UplinkAddr6(i))
	}
	for i := 1; i <= 2; i++ {
		other := 3 - i
		for _, c := range []struct {
			server, own, foreign string
		}{
			{ResolverAddr4(i), UplinkAddr4(i), UplinkAddr4(other)},
			{ResolverAddr6(i), UplinkAddr6(i), UplinkAddr6(other)},
		} {
			start := time.Now()
			got, err := l.Dig(l.Router, c.server, NameResolver, "TXT", "-b", c.own)
			if err != nil || got != fmt.Sprintf(`"isp%d"`, i) {
				t.Errorf("resolver %s from its customer %s: %q %v", c.server, c.own, got, err)
			}
			t.Logf("resolver %s answered its customer in %v", c.server, time.Since(start).Round(time.Microsecond))
			if got, err := l.Dig(l.Router, c.server, NameWWW, "A", "-b", c.own); err != nil || got != ServerAddr4 {
				t.Errorf("%s A from %s: %q %v", NameWWW, c.own, got, err)
			}
			if got, err := l.Dig(l.Router, c.server, NameWWW, "AAAA", "-b", c.own, "+tcp"); err != nil || got != ServerAddr6 {
				t.Errorf("%s AAAA over TCP from %s: %q %v", NameWWW, c.own, got, err)
			}
			if got, err := l.Dig(l.Router, c.server, NameISP(i), "A", "-b", c.own); err != nil || got != ResolverAddr4(i) {
				t.Errorf("%s from %s: %q %v", NameISP(i), c.own, got, err)
			}
			if _, err := l.Dig(l.Router, c.server, "nowhere.example.test", "-b", c.own); err == nil || !strings.Contains(err.Error(), "NXDOMAIN") {
				t.Errorf("nowhere.example.test: %v, want NXDOMAIN", err)
			}

			before, _ := l.ResolverDrops(i)
			got, err = l.Dig(l.Router, c.server, NameResolver, "TXT", "-b", c.foreign)
			if !errors.Is(err, ErrNoAnswer) {
				t.Errorf("resolver %s from %s (ISP %d's): %q %v, want no answer", c.server, c.foreign, other, got, err)
			}
			if after, _ := l.ResolverDrops(i); after <= before {
				t.Errorf("ISP %d dropped no foreign query (%d -> %d): the query did not get there", i, before, after)
			}
		}
	}
	// The core's forwarding reaches the other ISP's customer: the
	// router's wan2 address through ISP 1 (a reply's way back).
	out, err := l.Exec(l.ISP(1), "ping", "-c", "1", "-W", "1", UplinkAddr4(2))
	if err != nil {
		t.Errorf("ISP 1 to the router's ISP 2 address: %v %s", err, out)
	}
}

// TestForwarder: the router's dnsmasq answers the LAN host on both LAN
// addresses from its upstream; an upstream pinned to wan2 is asked
// through ISP 2, and one that is not goes out of the main table's
// default route (wan1) and is dropped by ISP 2 as foreign.
func TestForwarder(t *testing.T) {
	l := newDHCPLab(t, Options{Resolvers: true})
	fwd, err := l.StartForwarder([]string{ResolverAddr4(1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, server := range []string{LANRouter4, LANRouter6} {
		start := time.Now()
		if got, err := l.Dig(l.LAN, server, NameWWW); err != nil || got != ServerAddr4 {
			t.Errorf("LAN asks %s for %s: %q %v", server, NameWWW, got, err)
		}
		t.Logf("forwarder %s answered in %v", server, time.Since(start).Round(time.Microsecond))
		if got, err := l.Dig(l.LAN, server, NameWWW, "AAAA"); err != nil || got != ServerAddr6 {
			t.Errorf("LAN asks %s for %s AAAA: %q %v", server, NameWWW, got, err)
		}
		if got, err := l.Dig(l.LAN, server, NameResolver, "TXT"); err != nil || got != `"isp1"` {
			t.Errorf("LAN asks %s which resolver: %q %v", server, got, err)
		}
	}
	// Not on the uplinks, nor from the internet side.
	if out, _ := l.Exec(l.Router, "ss", "-Hlun", "sport = :53"); strings.Contains(out, "0.0.0.0:53") || strings.Contains(out, UplinkAddr4(1)) {
		t.Errorf("the forwarder listens beyond the LAN: %s", out)
	}

	// One forwarder at a time holds the LAN's port 53.
	fwd.Close()
	fwd, err = l.StartForwarder([]string{ResolverAddr4(2) + "@wan2"}, "--cache-size=0")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := l.Dig(l.LAN, LANRouter4, NameResolver, "TXT"); err != nil || got != `"isp2"` {
		t.Errorf("forwarder pinned to wan2: %q %v", got, err)
	}
	fwd.Close()
	if _, err := l.StartForwarder([]string{ResolverAddr4(2)}, "--cache-size=0"); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Dig(l.LAN, LANRouter4, NameResolver, "TXT"); err == nil {
		t.Errorf("forwarder to ISP 2's resolver out of wan1 got an answer: %q", got)
	}
	if n, _ := l.ResolverDrops(2); n == 0 {
		t.Error("ISP 2 dropped nothing from the router's wan1 address")
	}
}

// TestDHCPResolvers: under DHCP, the lease names the ISP's resolver, and
// the forwarder started on the leases' servers answers the LAN.
func TestDHCPResolvers(t *testing.T) {
	l := newDHCPLab(t, Options{DHCP: []int{1}})
	c, err := l.StartDHCPClient(1, Dhclient)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLease(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartForwarder([]string{ResolverAddr4(1)}); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Dig(l.LAN, LANRouter4, NameISP(1)); err != nil || got != ResolverAddr4(1) {
		t.Errorf("LAN through the forwarder: %q %v", got, err)
	}
	// Resolvers run for every ISP, DHCP or not; ISP 2's is static.
	routeFrom(t, l, 2, UplinkAddr4(2))
	if got, err := l.Dig(l.Router, ResolverAddr4(2), NameResolver, "TXT", "-b", UplinkAddr4(2)); err != nil || got != `"isp2"` {
		t.Errorf("ISP 2's resolver from the static uplink: %q %v", got, err)
	}
}
