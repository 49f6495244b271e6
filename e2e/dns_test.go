package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// resolverUplinks is two uplinks probed through themselves, each with
// its ISP's resolvers configured.
func resolverUplinks() string {
	var b strings.Builder
	for i := 1; i <= 2; i++ {
		fmt.Fprintf(&b, `
[[uplink]]
name = "isp%d"
interface = "wan%d"
dns = ["%s", "%s"]

[uplink.health]
targets = ["203.0.113.10", "2001:db8:ff::10"]
`, i, i, netlab.ResolverAddr4(i), netlab.ResolverAddr6(i))
	}
	return b.String()
}

// TestResolversPerUplink: each ISP's resolver answers only its own
// customer (a query from the router's address at the other ISP is
// dropped). The router's queries to an uplink's resolver always leave
// through that uplink, whatever the balancing of the router's own
// traffic does, so the router's forwarder, with both ISPs' resolvers as
// upstreams, answers 20 of 20 LAN queries before and after either
// uplink fails, and no query ever reaches a resolver from a foreign
// source. Status and explain show the resolvers.
func TestResolversPerUplink(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 2, Resolvers: true})
	d := startWanpin(t, l, resolverUplinks())
	s := statusOf(t, d)
	for i, u := range s.Uplinks {
		var got []string
		for _, a := range append(u.IPv4.DNS, u.IPv6.DNS...) {
			got = append(got, a.String())
		}
		if !slices.Contains(got, netlab.ResolverAddr4(i+1)) || !slices.Contains(got, netlab.ResolverAddr6(i+1)) {
			t.Errorf("status of %s: resolvers %v", u.Name, got)
		}
	}
	for i := 1; i <= 2; i++ {
		out := run(t, l, l.Router, "env", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, wanpinBin, "explain",
			"--uid", "0", "--dst", netlab.ResolverAddr4(i), "--proto", "udp", "--dport", "53")
		if !strings.Contains(out, "resolver") || !strings.Contains(out, fmt.Sprintf("100%%  isp%d", i)) {
			t.Errorf("explain of the router's query to ISP %d's resolver:\n%s", i, out)
		}
		// The router's own queries, many of them (the balancing of the
		// router's traffic is per destination, so these would otherwise
		// go out one fixed uplink), in both families.
		for _, srv := range []string{netlab.ResolverAddr4(i), netlab.ResolverAddr6(i)} {
			for range 5 {
				if _, err := l.Dig(l.Router, srv, netlab.NameWWW, "+time=2"); err != nil {
					t.Errorf("the router asking %s: %v", srv, err)
				}
			}
		}
	}
	// strict-order: the forwarder tries the next server when it cannot
	// send to one. By default dnsmasq 2.90 sends each query to the server
	// that answered last and, when that send fails (the uplink is down:
	// its resolvers are unreachable, not leaked through another ISP),
	// answers REFUSED without trying the servers listed before it, for up
	// to 20 s (README, "Resolvers").
	if _, err := l.StartForwarder([]string{netlab.ResolverAddr4(1), netlab.ResolverAddr4(2)}, "--cache-size=0", "--strict-order"); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if n := lanQueries(t, l, 20); n != 20 {
			t.Errorf("%s: the forwarder answered %d of 20 LAN queries", when, n)
		}
		for i := 1; i <= 2; i++ {
			if n, err := l.ResolverDrops(i); err != nil || n != 0 {
				t.Errorf("%s: ISP %d's resolver was sent %d queries from a foreign source (%v)", when, i, n, err)
			}
		}
	}
	check("both up")
	for i := 1; i <= 2; i++ {
		if err := l.Blackhole(i, true); err != nil {
			t.Fatal(err)
		}
		d.waitFor(fmt.Sprintf(`uplink down" uplink=isp%d`, i), 1, 5*time.Second)
		check(fmt.Sprintf("isp%d down", i))
		if err := l.Blackhole(i, false); err != nil {
			t.Fatal(err)
		}
		d.waitFor(fmt.Sprintf(`uplink up" uplink=isp%d`, i), 2, 10*time.Second)
		check(fmt.Sprintf("isp%d back", i))
	}
}
