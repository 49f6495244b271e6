package tables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"

	"github.com/wanpin/wanpin/internal/nstest"
)

func sample() desired.Routing {
	return desired.Routing{
		Rules: []desired.Rule{
			{Family: inet.IPv4, Priority: 10000, Table: 254, Suppress: true},
			{Family: inet.IPv6, Priority: 10000, Table: 254, Suppress: true},
			{Family: inet.IPv4, Priority: 10101, Table: 200, Mark: 0x10000, Mask: 0xff0000},
			{Family: inet.IPv6, Priority: 10101, Table: 200, Mark: 0x10000, Mask: 0xff0000},
			{Family: inet.IPv4, Priority: 10102, Table: 201, Mark: 0x20000, Mask: 0xff0000},
			{Family: inet.IPv4, Priority: 10401, Table: 200, Src: netip.MustParsePrefix("198.51.100.2/32")},
			// The router's own traffic: a resolver's path, a dead one's
			// refusal, and the multipath table.
			{Family: inet.IPv4, Priority: 10050, Table: 200, Dst: netip.MustParsePrefix("203.0.113.53/32"), Mark: 0, Mask: 0xff0000, Iif: "lo"},
			{Family: inet.IPv4, Priority: 10051, Action: desired.Unreachable, Dst: netip.MustParsePrefix("203.0.113.54/32"), Mask: 0xff0000, Iif: "lo"},
			{Family: inet.IPv4, Priority: 10700, Table: 300, Iif: "lo"},
			{Family: inet.IPv6, Priority: 10700, Table: 300, Iif: "lo"},
		},
		Routes: []desired.Route{
			{Family: inet.IPv4, Table: 200, Gateway: netip.MustParseAddr("198.51.100.1"), Interface: "wan1"},
			{Family: inet.IPv4, Table: 200, Type: desired.UnreachableRoute, Metric: desired.UnreachableMetric},
			{Family: inet.IPv6, Table: 200, Type: desired.UnreachableRoute, Metric: desired.UnreachableMetric},
			{Family: inet.IPv6, Table: 200, Gateway: netip.MustParseAddr("2001:db8:101::1"), Interface: "wan1"},
			{Family: inet.IPv4, Table: 201, Interface: "wan2"},
			{Family: inet.IPv4, Table: 201, Type: desired.UnreachableRoute, Metric: desired.UnreachableMetric},
			{Family: inet.IPv4, Table: 300, Nexthops: []desired.Nexthop{
				{Interface: "wan1", Gateway: netip.MustParseAddr("198.51.100.1"), Weight: 3},
				{Interface: "wan2", Weight: 1}}},
			{Family: inet.IPv6, Table: 300, Nexthops: []desired.Nexthop{
				{Interface: "wan1", Gateway: netip.MustParseAddr("fe80::1"), Weight: 2},
				{Interface: "wan2", Gateway: netip.MustParseAddr("fe80::1"), Weight: 1}}},
		},
	}
}

func setup(t *testing.T) (*nstest.NS, *Manager) {
	ns := nstest.New(t, "wpt")
	ns.Run(t, "ip", "link", "add", "wan1", "type", "veth", "peer", "isp1")
	ns.Run(t, "ip", "link", "add", "wan2", "type", "veth", "peer", "isp2")
	for _, l := range []string{"wan1", "wan2", "isp1", "isp2"} {
		ns.Run(t, "ip", "link", "set", l, "up")
	}
	ns.Run(t, "ip", "addr", "add", "198.51.100.2/29", "dev", "wan1")
	ns.Run(t, "ip", "addr", "add", "2001:db8:101::2/64", "dev", "wan1", "nodad")
	ns.Run(t, "ip", "addr", "add", "198.51.100.10/32", "peer", "198.51.100.9", "dev", "wan2")
	m, err := New(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return ns, m
}

// kernelText reads back what ip prints for our objects, in Render's layout.
func kernelText(t *testing.T, ns *nstest.NS, d desired.Routing) string {
	var b strings.Builder
	for _, fam := range inet.Families {
		fs := "-4"
		if fam == inet.IPv6 {
			fs = "-6"
		}
		var rules []string
		for _, l := range strings.Split(ns.Run(t, "ip", fs, "rule"), "\n") {
			if strings.Contains(l, "proto 119") {
				rules = append(rules, strings.TrimSpace(l))
			}
		}
		if len(rules) > 0 {
			b.WriteString("# ip " + fs + " rule\n" + strings.Join(rules, "\n") + "\n")
		}
		seen := map[int]bool{}
		for _, r := range d.Routes {
			if r.Family != fam || seen[r.Table] {
				continue
			}
			seen[r.Table] = true
		}
		for _, id := range sortedKeys(seen) {
			out := ns.Run(t, "ip", fs, "route", "show", "table", itoa(id))
			b.WriteString("# ip " + fs + " route show table " + itoa(id) + "\n")
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				b.WriteString(strings.TrimSpace(l) + "\n")
			}
		}
	}
	return b.String()
}

func TestApplyMatchesRender(t *testing.T) {
	ns, m := setup(t)
	d := sample()
	res, err := m.Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	if res.RulesAdded != len(d.Rules) || res.RoutesAdded != len(d.Routes) {
		t.Errorf("first apply: %+v", res)
	}
	want := normalise(d.Render())
	got := normalise(kernelText(t, ns, d))
	if got != want {
		t.Errorf("kernel differs from Render:\n--- kernel\n%s\n--- render\n%s", got, want)
	}
	res, err = m.Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed() {
		t.Errorf("second apply changed something: %+v", res)
	}
	cur, err := m.Current()
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.Rules) != len(d.Rules) || len(cur.Routes) != len(d.Routes) {
		t.Errorf("kernel holds %d rules, %d routes; want %d, %d", len(cur.Rules), len(cur.Routes), len(d.Rules), len(d.Routes))
	}
}

func TestForeignObjectsSurvive(t *testing.T) {
	ns, m := setup(t)
	// Canaries: a rule inside wanpin's priority block but with another
	// protocol, a rule with the same table, and a route in "our" table.
	ns.Run(t, "ip", "rule", "add", "priority", "10050", "fwmark", "0x1", "lookup", "300")
	ns.Run(t, "ip", "rule", "add", "priority", "10101", "from", "192.0.2.7", "lookup", "200")
	ns.Run(t, "ip", "route", "add", "203.0.113.0/24", "dev", "wan1", "table", "200")
	if _, err := m.Apply(sample()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Apply(desired.Routing{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	rules := ns.Run(t, "ip", "rule")
	for _, want := range []string{"10050:\tfrom all fwmark 0x1 lookup 300", "10101:\tfrom 192.0.2.7 lookup 200"} {
		if !strings.Contains(rules, want) {
			t.Errorf("canary rule %q gone:\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "proto 119") {
		t.Errorf("wanpin rules left after Remove:\n%s", rules)
	}
	if out := ns.Run(t, "ip", "route", "show", "table", "200"); !strings.Contains(out, "203.0.113.0/24 dev wan1") {
		t.Errorf("canary route gone: %q", out)
	}
	if out := ns.Run(t, "ip", "route", "show", "table", "all", "proto", "119"); strings.TrimSpace(out) != "" {
		t.Errorf("wanpin routes left after Remove:\n%s", out)
	}
}

func TestApplyConverges(t *testing.T) {
	_, m := setup(t)
	a := sample()
	b := sample()
	// b: uplink 2 gone, uplink 1's gateway changed, a new address rule.
	b.Rules = append(b.Rules[:4], desired.Rule{Family: inet.IPv4, Priority: 10401, Table: 200, Src: netip.MustParsePrefix("198.51.100.3/32")})
	b.Routes = []desired.Route{
		{Family: inet.IPv4, Table: 200, Gateway: netip.MustParseAddr("198.51.100.4"), Interface: "wan1"},
		{Family: inet.IPv4, Table: 200, Type: desired.UnreachableRoute, Metric: desired.UnreachableMetric},
	}
	for i, d := range []desired.Routing{a, b, a, b, {}, a} {
		if _, err := m.Apply(d); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		cur, err := m.Current()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := keys(cur), keys(d); got != want {
			t.Fatalf("step %d: kernel\n%s\nwant\n%s", i, got, want)
		}
	}
}

func TestMissingInterfaceIsAnError(t *testing.T) {
	_, m := setup(t)
	_, err := m.Apply(desired.Routing{Routes: []desired.Route{{Family: inet.IPv4, Table: 200, Interface: "ppp0"}}})
	if err == nil || !strings.Contains(err.Error(), "ppp0") {
		t.Fatalf("want an error naming ppp0, got %v", err)
	}
}

// A route of another program where wanpin would put one is never
// replaced, and its table counts as foreign; the rest of the routing is
// applied all the same, and the conflict is reported each time.
func TestForeignRouteIsNeverReplaced(t *testing.T) {
	ns, m := setup(t)
	ns.Run(t, "ip", "route", "add", "default", "via", "198.51.100.1", "dev", "wan1", "table", "200")
	foreign, err := m.ForeignTables()
	if err != nil {
		t.Fatal(err)
	}
	if !foreign.Routes[200] || foreign.Routes[201] {
		t.Errorf("foreign tables %v, want 200 and not 201", foreign.Routes)
	}
	d := sample()
	for i := range 2 {
		res, err := m.Apply(d)
		if err != nil {
			t.Fatalf("apply %d over a foreign default route: %v", i, err)
		}
		if len(res.Conflicts) != 1 || res.Conflicts[0].Route.Table != 200 || res.Conflicts[0].Foreign != "proto 3" ||
			res.Conflicts[0].Route.String() != "default via 198.51.100.1 dev wan1 proto 119" {
			t.Errorf("apply %d: conflicts %+v", i, res.Conflicts)
		}
		if i == 1 && res.Changed() {
			t.Errorf("the second apply changed %+v", res)
		}
	}
	if out := ns.Run(t, "ip", "route", "show", "table", "200"); !strings.Contains(out, "default via 198.51.100.1 dev wan1") || strings.Contains(out, "default via 198.51.100.1 dev wan1 proto 119") {
		t.Errorf("the foreign route changed: %q", out)
	}
	// Everything else is in: the kernel holds d but for the one route.
	var rest desired.Routing
	rest.Rules = d.Rules
	for _, r := range d.Routes {
		if r.Key() != d.Routes[0].Key() {
			rest.Routes = append(rest.Routes, r)
		}
	}
	cur, err := m.Current()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keys(cur), keys(rest); got != want {
		t.Errorf("kernel\n%s\nwant\n%s", got, want)
	}
	held, err := m.Contested(d.Routes)
	if err != nil || len(held) != 1 || held[d.Routes[0].Key()] != "proto 3" {
		t.Errorf("contested %v %v", held, err)
	}
	// Once the other program's route goes, the next apply puts ours in.
	ns.Run(t, "ip", "route", "del", "default", "table", "200")
	if held, err := m.Contested(d.Routes); err != nil || len(held) != 0 {
		t.Errorf("contested after the deletion: %v %v", held, err)
	}
	res, err := m.Apply(d)
	if err != nil || len(res.Conflicts) != 0 || res.RoutesAdded != 1 {
		t.Errorf("apply after the deletion: %+v %v", res, err)
	}
}

// A table that another program's rule looks up is foreign even while it
// holds no route, in either family; wanpin's own rules and rules that
// look nothing up do not count.
func TestForeignRuleMakesTableForeign(t *testing.T) {
	ns, m := setup(t)
	if _, err := m.Apply(sample()); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "ip", "rule", "add", "pref", "5000", "from", "192.0.2.0/26", "lookup", "201")
	ns.Run(t, "ip", "rule", "add", "pref", "4000", "from", "192.0.2.0/27", "lookup", "201")
	ns.Run(t, "ip", "-6", "rule", "add", "pref", "5001", "from", "2001:db8:1::/64", "lookup", "400")
	ns.Run(t, "ip", "rule", "add", "pref", "5002", "from", "192.0.2.64/26", "unreachable")
	f, err := m.ForeignTables()
	if err != nil {
		t.Fatal(err)
	}
	if f.Rules[201] != 4000 || f.Rules[400] != 5001 {
		t.Errorf("rules' tables %v, want 201 (pref 4000) and 400 (pref 5001)", f.Rules)
	}
	for _, id := range []int{0, 200, 300} {
		if _, ok := f.Rules[id]; ok {
			t.Errorf("table %d counted as another program's: %v", id, f.Rules)
		}
	}
	if f.Routes[200] || f.Routes[201] || f.Routes[400] {
		t.Errorf("tables with other programs' routes %v, want none of 200, 201, 400", f.Routes)
	}
}
