package core

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/step/*.golden; review the diff before committing it")

const stepConfig = `
[[uplink]]
name = "fibre"
interface = "wan1"
weight = 3

[uplink.health]
targets = ["203.0.113.1", "203.0.113.2"]

[[uplink]]
name = "dsl"
interface = "ppp0"

[[policy]]
name = "voip"
protocol = "udp"
ports = ["5060"]
uplinks = ["dsl"]
`

func mustConfig(t testing.TB, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("wanpin.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

var (
	t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	a  = netip.MustParseAddr
)

// Interfaces as netlink shows them.
func fibre() Link {
	return Link{Name: "wan1", Index: 3, Exists: true, AdminUp: true, Carrier: true,
		Addrs:   []Addr{{Prefix: netip.MustParsePrefix("198.51.100.2/29")}, {Prefix: netip.MustParsePrefix("2001:db8:101::2/64")}},
		Gateway: inet.PerFamily[netip.Addr]{a("198.51.100.1"), a("fe80::1")}}
}

func ppp(index int, local, peer string) Link {
	return Link{Name: "ppp0", Index: index, Exists: true, AdminUp: true, Carrier: true, PointToPoint: true,
		Addrs: []Addr{{Prefix: netip.MustParsePrefix(local + "/32"), Peer: a(peer)}}}
}

func links(ls ...Link) map[string]Link {
	m := map[string]Link{}
	for _, l := range ls {
		m[l.Name] = l
	}
	return m
}

func noCarrier(l Link) Link { l.Carrier = false; return l }

// noIPv4 is l without its IPv4 addresses (a DHCP lease gone).
func noIPv4(l Link) Link {
	l.Addrs = slices.DeleteFunc(slices.Clone(l.Addrs), func(x Addr) bool { return x.Prefix.Addr().Is4() })
	return l
}

func noIPv6Gateway(l Link) Link {
	*l.Gateway.Of(inet.IPv6) = netip.Addr{}
	return l
}

// step is one input of a scenario, at a time after t0.
type step struct {
	after time.Duration
	in    Input
}

// run walks a scenario and renders every step's input and effects.
func run(cfg *config.Config, steps []step) (State, string, []Result) {
	s := NewState(cfg)
	var b strings.Builder
	var results []Result
	for _, st := range steps {
		r := Step(s, t0.Add(st.after), st.in)
		fmt.Fprintf(&b, "== +%v %s\n", st.after, describe(st.in))
		for _, e := range r.Effects {
			b.WriteString(e.String() + "\n")
		}
		if r.Err != nil {
			fmt.Fprintf(&b, "error: %v\n", r.Err)
		}
		s = r.State
		results = append(results, r)
	}
	return s, b.String(), results
}

func describe(in Input) string {
	switch in := in.(type) {
	case Start:
		return fmt.Sprintf("start with %s", linksText(in.Links))
	case Observed:
		return fmt.Sprintf("netlink: %s", linksText(in.Links))
	case Retry:
		return fmt.Sprintf("retry: %s", linksText(in.Links))
	case Reload:
		return fmt.Sprintf("reload: %d uplinks, %d policies", len(in.Config.Uplinks), len(in.Config.Policies))
	case PPPEvent:
		if in.Up {
			return fmt.Sprintf("pppd ip-up %s local %s peer %s", in.Iface, in.Local, in.Peer)
		}
		return "pppd ip-down " + in.Iface
	case HealthVerdict:
		return fmt.Sprintf("health %s %v healthy=%v %q", in.Uplink, in.Family, in.Healthy, in.Reason)
	case LeaseEvent:
		if in.Lease == nil {
			return fmt.Sprintf("lease lost %s %v", in.Key.Interface, in.Key.Family)
		}
		return fmt.Sprintf("lease %s %v %s gateways %v dns %v", in.Key.Interface, in.Key.Family, in.Lease.Address, in.Lease.Gateways, in.Lease.DNS)
	}
	return fmt.Sprintf("%T %+v", in, in)
}

func linksText(ls map[string]Link) string {
	var parts []string
	for _, n := range []string{"wan1", "ppp0"} {
		l, ok := ls[n]
		switch {
		case !ok || !l.Exists:
			parts = append(parts, n+" missing")
		default:
			var addrs []string
			for _, x := range l.Addrs {
				addrs = append(addrs, x.Prefix.Addr().String())
			}
			parts = append(parts, fmt.Sprintf("%s#%d carrier=%v [%s]", n, l.Index, l.Carrier, strings.Join(addrs, " ")))
		}
	}
	return strings.Join(parts, ", ")
}

// scenarios are the transitions the issue names, each a readable script
// whose whole output is pinned in testdata/step/<name>.golden.
func scenarios(t testing.TB) map[string][]step {
	bothUp := links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))
	start := step{0, Start{Links: bothUp}}
	unhealthy := HealthVerdict{Key: Key{"fibre", inet.IPv4}, Verdict: Verdict{Reason: "2 rounds lost: 203.0.113.1 timeout, 203.0.113.2 timeout"}}
	healthy := HealthVerdict{Key: Key{"fibre", inet.IPv4}, Verdict: Verdict{Healthy: true}}
	good := mustConfig(t, strings.Replace(stepConfig, "weight = 3", "weight = 1", 1))
	return map[string][]step{
		"start": {start},
		"carrier_loss": {start,
			{time.Second, Observed{Links: links(noCarrier(fibre()), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{2 * time.Second, Observed{Links: bothUp, Trigger: "netlink"}}},
		// A failed verdict takes the uplink out of the balancing and
		// flushes it, but keeps its routes (the probes need them); IPv6 has
		// no targets of its own and follows IPv4's verdict.
		"blackhole": {start, {time.Second, healthy}, {3 * time.Second, unhealthy}},
		// The monitor judges hold-down (pkg/health); the machine takes the
		// uplink back at the healthy verdict, and moves nothing back.
		"recovery": {start, {time.Second, healthy}, {3 * time.Second, unhealthy},
			{3*time.Second + 2500*time.Millisecond, healthy}},
		// pppd's ip-down, the interface goes, ip-up with the peer, the new
		// session's interface (new index, new address): the old address's
		// NAT entries are flushed.
		"ppp_redial": {start,
			{time.Second, PPPEvent{Iface: "ppp0"}},
			{time.Second + 5*time.Millisecond, Observed{Links: links(fibre()), Trigger: "netlink"}},
			{4 * time.Second, Observed{Links: links(fibre(), ppp(9, "198.51.100.11", "198.51.100.9")), Trigger: "netlink"}},
			{4*time.Second + time.Millisecond, PPPEvent{Up: true, Iface: "ppp0", Local: a("198.51.100.11"), Peer: a("198.51.100.9")}}},
		// The RA's default route expires: IPv6 goes, IPv4 stays, no hook
		// (the uplink as a whole is still up).
		// fibre's IPv4 lease goes while its IPv6 works; its IPv4 probes
		// (fibre's only targets) cannot be sent and lose their rounds.
		// IPv6 carries on (it follows IPv4's verdict only while IPv4 can
		// carry traffic), and when the lease comes back IPv4's probes
		// start afresh instead of holding it (and IPv6) down.
		"ipv4_gone": {start, {time.Second, healthy},
			{2 * time.Second, Observed{Links: links(noIPv4(fibre()), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{3 * time.Second, unhealthy},
			{4 * time.Second, Observed{Links: bothUp, Trigger: "netlink"}}},
		"family_down": {start,
			{time.Second, Observed{Links: links(noIPv6Gateway(fibre()), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}}},
		"maintenance": {start,
			{time.Second, SetService{Uplink: "fibre"}},
			{2 * time.Second, SetService{Uplink: "fibre", InService: true}},
			{3 * time.Second, SetService{Uplink: "fibr"}}},
		"reload": {start,
			{time.Second, Reload{Config: good}},
			{2 * time.Second, ReloadRejected{Err: errors.New("wanpin.toml:4: uplink[1].weight: weight must be 1..1000, got 0")}}},
		// Reloads that change the marks: the mask (every uplink's mark
		// moves), then the order (fibre and dsl swap marks), then dsl
		// removed and lte added; the pinned connections follow each,
		// right after the table that knows the new marks.
		"reload_marks": {start,
			{time.Second, Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+stepConfig)}},
			{2 * time.Second, Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+swappedConfig)}},
			{3 * time.Second, Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+fibreAndLTE)}}},
		"drift": {start,
			{time.Second, Drift{Missing: []string{`rule "10101:\tfrom all fwmark 0x10000/0xff0000 lookup 200 proto 119"`, "nftables table inet wanpin"},
				NFT: true, Routing: true}},
			{2 * time.Second, Drift{Missing: []string{"nftables table inet wanpin"}, NFT: true}},
			{3 * time.Second, Drift{Missing: []string{"sysctl net.ipv4.conf.all.src_valid_mark is 0, want 1"}, Sysctls: true}}},
		"apply_failure": {start,
			{time.Millisecond, ApplyFailed{Err: errors.New("applying nftables: replacing nftables table inet wanpin: operation not permitted")}},
			{time.Second, Retry{Links: bothUp}}},
		"stop": {start, {time.Second, Stop{}}},
		// An old hook script's route holds the place of fibre's default
		// route in table 200: logged once, however often the routing is
		// applied, and once more when it ends; nothing is applied again
		// for it (the rest of the routing went in).
		"route_conflict": {
			{0, Start{Links: bothUp, Tables: Tables{Uplinks: map[string]int{"fibre": 200, "dsl": 201}, Router: 202}}},
			{time.Second, RoutingConflicts{Conflicts: []RouteConflict{{Route: fibreDefault, Foreign: "proto 3"}}}},
			{2 * time.Second, RoutingConflicts{Conflicts: []RouteConflict{{Route: fibreDefault, Foreign: "proto 3"}}}},
			{3 * time.Second, RoutingConflicts{Conflicts: []RouteConflict{{Route: routerDefault, Foreign: "proto 16"}}}},
			{4 * time.Second, RoutingConflicts{Conflicts: []RouteConflict{}}}},
		// dhclient on wan1 and no default route in the main table (the
		// second lease's default route fails with "File exists"): the
		// hook's lease brings the uplink up, a flap keeps its gateway, a
		// new address is followed and the old one's NAT entries flushed,
		// and the loss of the lease takes it down.
		"dhcp_lease": {
			{0, Start{Links: links(noGateway(fibre()), ppp(7, "198.51.100.10", "198.51.100.9"))}},
			{time.Second, LeaseEvent{Key: LeaseKey{"wan1", inet.IPv4}, Lease: &Lease{Address: netip.MustParsePrefix("198.51.100.2/29"),
				Gateways: []netip.Addr{a("198.51.100.1")}, DNS: []netip.Addr{a("198.51.100.53")}, Client: "dhclient"}}},
			{2 * time.Second, Observed{Links: links(noCarrier(noGateway(fibre())), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{3 * time.Second, Observed{Links: links(noGateway(fibre()), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{4 * time.Second, Observed{Links: links(readdress(noGateway(fibre()), "198.51.100.3/29"), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{4*time.Second + time.Millisecond, LeaseEvent{Key: LeaseKey{"wan1", inet.IPv4}, Lease: &Lease{Address: netip.MustParsePrefix("198.51.100.3/29"),
				Gateways: []netip.Addr{a("198.51.100.1")}, DNS: []netip.Addr{a("198.51.100.53")}, Client: "dhclient"}}},
			{5 * time.Second, LeaseEvent{Key: LeaseKey{"wan1", inet.IPv4}}}},
		// PPP's usepeerdns servers and a configured resolver: the router's
		// queries to them take their uplink, and fail at once while it is
		// out.
		"resolvers": {
			{0, Start{Links: links(fibre())}},
			{time.Millisecond, PPPEvent{Up: true, Iface: "ppp0", Peer: a("198.51.100.9"), DNS: []netip.Addr{a("198.51.100.54")}}},
			{time.Second, Observed{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9")), Trigger: "netlink"}},
			{2 * time.Second, Observed{Links: links(fibre(), noCarrier(ppp(7, "198.51.100.10", "198.51.100.9"))), Trigger: "netlink"}}},
	}
}

// stepConfig with its uplinks in the other order.
const swappedConfig = `
[[uplink]]
name = "dsl"
interface = "ppp0"

[[uplink]]
name = "fibre"
interface = "wan1"
weight = 3

[uplink.health]
targets = ["203.0.113.1", "203.0.113.2"]
`

// dsl removed: fibre first again, and a new uplink after it.
const fibreAndLTE = `
[[uplink]]
name = "fibre"
interface = "wan1"
weight = 3

[uplink.health]
targets = ["203.0.113.1", "203.0.113.2"]

[[uplink]]
name = "lte"
interface = "wwan0"
`

var (
	fibreDefault  = desired.Route{Family: inet.IPv4, Table: 200, Gateway: netip.MustParseAddr("198.51.100.1"), Interface: "wan1"}
	routerDefault = desired.Route{Family: inet.IPv4, Table: 202, Nexthops: []desired.Nexthop{
		{Interface: "wan1", Gateway: netip.MustParseAddr("198.51.100.1"), Weight: 3}, {Interface: "ppp0", Weight: 1}}}
)

// The conflicts are in the status, by table and whose it is, until they
// end.
func TestRouteConflictReport(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9")),
		Tables: Tables{Uplinks: map[string]int{"fibre": 200, "dsl": 201}, Router: 202}}).State
	s = Step(s, t0.Add(time.Second), RoutingConflicts{Conflicts: []RouteConflict{{Route: fibreDefault, Foreign: "proto 3"},
		{Route: routerDefault, Foreign: "proto 16"}}}).State
	want := []RouteConflictReport{
		{Table: 200, Uplink: "fibre", Route: "default via 198.51.100.1 dev wan1 proto 119", Foreign: "proto 3"},
		{Table: 202, Route: routerDefault.String(), Foreign: "proto 16"},
	}
	if got := s.Report().RouteConflicts; !reflect.DeepEqual(got, want) {
		t.Errorf("report %+v, want %+v", got, want)
	}
	if s.Applied == nil {
		t.Errorf("a conflict made the machine forget what is applied (a retry would follow)")
	}
	s = Step(s, t0.Add(2*time.Second), RoutingConflicts{}).State
	if got := s.Report().RouteConflicts; len(got) != 0 {
		t.Errorf("report after the end %+v", got)
	}
}

func noGateway(l Link) Link {
	l.Gateway = inet.PerFamily[netip.Addr]{}
	return l
}

func readdress(l Link, p string) Link {
	l.Addrs = append([]Addr{{Prefix: netip.MustParsePrefix(p)}}, l.Addrs[1:]...)
	return l
}

func TestStepGolden(t *testing.T) {
	for name, steps := range scenarios(t) {
		t.Run(name, func(t *testing.T) {
			_, got, _ := run(mustConfig(t, stepConfig), steps)
			checkGolden(t, name, got)
		})
	}
}

// checkGolden compares a scenario's rendering with its golden file (or
// rewrites it, with -update).
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "step", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./pkg/core -run TestStepGolden -update, then review git diff)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("effects differ from %s (-golden +got):\n%s", path, d)
	}
}

// kinds lists the effects' kinds in order, apply and flush only.
func kinds(effects []Effect) []string {
	var out []string
	for _, e := range effects {
		switch e.(type) {
		case ApplyNFT:
			out = append(out, "nft")
		case ApplyRouting:
			out = append(out, "routing")
		case FlushMark:
			out = append(out, "flush")
		case FlushAddr:
			out = append(out, "flush-addr")
		}
	}
	return out
}

// The safety-critical order, stated apart from the goldens so that a
// regeneration cannot hide it: when a family goes down, nftables first,
// then routes, then conntrack; otherwise routes before nftables.
func TestDownOrder(t *testing.T) {
	sc := scenarios(t)
	for _, c := range []struct {
		scenario string
		step     int
		want     []string
	}{
		{"carrier_loss", 1, []string{"nft", "routing", "flush", "flush"}},
		{"carrier_loss", 2, []string{"routing", "nft"}},
		{"blackhole", 2, []string{"nft", "routing", "flush", "flush"}},
		{"recovery", 3, []string{"routing", "nft"}},
		{"family_down", 1, []string{"nft", "routing", "flush"}},
		{"maintenance", 1, []string{"nft", "routing", "flush", "flush"}},
		{"ppp_redial", 1, []string{"nft", "routing", "flush"}},
		{"ppp_redial", 2, []string{"nft", "flush-addr"}},
		{"ppp_redial", 3, []string{"routing", "nft"}},
		{"start", 0, []string{"routing", "nft"}},
		{"drift", 1, []string{"routing", "nft"}},
		{"drift", 2, []string{"nft"}},
		{"drift", 3, nil},
	} {
		_, _, res := run(mustConfig(t, stepConfig), sc[c.scenario])
		if got := kinds(res[c.step].Effects); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s step %d: %v, want %v", c.scenario, c.step, got, c.want)
		}
	}
}

// Step never changes the state it is given: a test can keep old states.
func TestStepKeepsPreviousState(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))}).State
	before := fmt.Sprintf("%+v", s)
	Step(s, t0.Add(time.Second), Observed{Links: links(noCarrier(fibre()))})
	Step(s, t0.Add(time.Second), SetService{Uplink: "fibre"})
	if after := fmt.Sprintf("%+v", s); after != before {
		t.Errorf("the previous state changed:\n%s\n%s", before, after)
	}
}

// Inputs that are independent of each other (verdicts and maintenance of
// different uplinks, a service resolved) lead to the same kernel state in
// any order.
func TestIndependentInputsCommute(t *testing.T) {
	cfg := mustConfig(t, stepConfig+`
[[uplink]]
name = "lte"
interface = "wwan0"
tier = 2
gateway = "192.168.8.1"

[uplink.health]
targets = ["2001:db8:53::53"]

[[policy]]
name = "backup"
services = ["restic.service"]
uplinks = ["lte"]
`)
	lte := Link{Name: "wwan0", Index: 11, Exists: true, AdminUp: true, Carrier: true,
		Addrs:   []Addr{{Prefix: netip.MustParsePrefix("192.168.8.2/24")}, {Prefix: netip.MustParsePrefix("2001:db8:103::2/64")}},
		Gateway: inet.PerFamily[netip.Addr]{{}, a("fe80::1")}}
	start := Step(NewState(cfg), t0, Start{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"), lte)}).State
	inputs := []Input{
		HealthVerdict{Key: Key{"fibre", inet.IPv4}, Verdict: Verdict{Reason: "2 rounds lost"}},
		HealthVerdict{Key: Key{"lte", inet.IPv6}, Verdict: Verdict{Healthy: true}},
		SetService{Uplink: "dsl"},
		Services{Cgroups: map[string][]policy.CgroupMatch{"restic.service": {{Level: 2, ID: 77}}}},
	}
	var want *State
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		s := start
		for _, i := range rng.Perm(len(inputs)) {
			s = Step(s, t0.Add(time.Second), inputs[i]).State
		}
		if want == nil {
			want = &s
			continue
		}
		if !reflect.DeepEqual(s.Desired, want.Desired) {
			t.Fatalf("order changed the desired state:\n%+v\n%+v", s.Desired, want.Desired)
		}
		for n, u := range s.Uplinks {
			if w := want.Uplinks[n]; u.Up != w.Up || u.Reason != w.Reason || !reflect.DeepEqual(u.State, w.State) {
				t.Fatalf("order changed uplink %s: %+v, want %+v", n, u, w)
			}
		}
	}
}

// A random walk of carrier flaps, verdicts, maintenance and address
// changes: after every step the invariants hold.
func TestRandomWalkInvariants(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	rng := rand.New(rand.NewPCG(3, 4))
	wan := []Link{fibre(), noCarrier(fibre()), noIPv6Gateway(fibre()), {Name: "wan1"}}
	pppLinks := []Link{ppp(7, "198.51.100.10", "198.51.100.9"), ppp(8, "198.51.100.12", "198.51.100.9"), {Name: "ppp0"}}
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), pppLinks[0])}).State
	for i := range 3000 {
		at := t0.Add(time.Duration(i+1) * 100 * time.Millisecond)
		var in Input
		switch rng.IntN(5) {
		case 0, 1:
			in = Observed{Links: links(wan[rng.IntN(len(wan))], pppLinks[rng.IntN(len(pppLinks))]), Trigger: "netlink"}
		case 2:
			in = HealthVerdict{Key: Key{"fibre", inet.IPv4}, Verdict: Verdict{Healthy: rng.IntN(2) == 0, Reason: "r"}}
		case 3:
			in = SetService{Uplink: []string{"fibre", "dsl"}[rng.IntN(2)], InService: rng.IntN(2) == 0}
		case 4:
			in = Drift{Missing: []string{"x"}, NFT: rng.IntN(2) == 0, Routing: rng.IntN(2) == 0}
		}
		prev := s
		r := Step(prev, at, in)
		s = r.State
		// 1. Applied is what was just computed.
		if s.Applied == nil || !reflect.DeepEqual(*s.Applied, s.Desired) {
			t.Fatalf("step %d %T: applied state is not the desired one", i, in)
		}
		// 2. A family that went down is flushed, after nft and routing;
		// so is, when a family's first uplink comes back, every uplink
		// still down in it (strandedFlushes); nothing else is flushed by
		// mark.
		wentDown, want := map[Key]bool{}, map[Key]bool{}
		for _, f := range inet.Families {
			before, after := false, false
			for name, u := range s.Uplinks {
				before = before || prev.Uplinks[name].Families.Get(f).Up
				after = after || u.Families.Get(f).Up
				if prev.Uplinks[name].Families.Get(f).Up && !u.Families.Get(f).Up {
					wentDown[Key{name, f}], want[Key{name, f}] = true, true
				}
			}
			for name, u := range s.Uplinks {
				if !before && after && !u.Families.Get(f).Up && len(u.State.Family(f).Addrs) > 0 {
					want[Key{name, f}] = true
				}
			}
		}
		ks := kinds(r.Effects)
		flushed := map[Key]bool{}
		for _, e := range r.Effects {
			if fm, ok := e.(FlushMark); ok {
				flushed[Key{fm.Uplink, fm.Family}] = true
			}
		}
		if !reflect.DeepEqual(flushed, want) && !(len(flushed) == 0 && len(want) == 0) {
			t.Fatalf("step %d %T: flushed %v, want %v (went down %v)", i, in, flushed, want, wentDown)
		}
		if len(wentDown) > 0 && (len(ks) == 0 || ks[0] != "nft") {
			t.Fatalf("step %d %T: a family went down but nftables is not first: %v", i, in, ks)
		}
		// 3. The balancer never chooses a family that is not usable.
		for _, f := range inet.Families {
			for _, b := range s.Desired.NFT.Default.For(f).Buckets {
				for i, u := range cfg.Uplinks {
					if cfg.UplinkMark(i) == b.Mark && !s.Uplinks[u.Name].State.Family(f).Usable() {
						t.Fatalf("step %d: %s %v balanced while not usable", i, u.Name, f)
					}
				}
			}
		}
	}
}

// Failback, step by step: dsl is a tier-2 backup. While fibre is out,
// dsl carries everything; when fibre is back, dsl's connections are
// moved there (failback = "move") after the apply that gives fibre the
// new ones, family by family, or left alone (keep, the default). A start
// and a backup's own return move nothing.
func TestFailback(t *testing.T) {
	cfgText := func(mode string) string {
		return `
[[uplink]]
name = "fibre"
interface = "wan1"

[[uplink]]
name = "dsl"
interface = "ppp0"
tier = 2
failback = "` + mode + `"
`
	}
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	steps := []step{
		{0, Start{Links: links(fibre(), pppUp)}},
		{time.Second, Observed{Links: links(noCarrier(fibre()), pppUp), Trigger: "netlink"}},
		{2 * time.Second, Observed{Links: links(fibre(), pppUp), Trigger: "netlink"}},
		{3 * time.Second, Observed{Links: links(fibre(), noCarrier(pppUp)), Trigger: "netlink"}},
		{4 * time.Second, Observed{Links: links(fibre(), pppUp), Trigger: "netlink"}},
	}
	kinds := func(r Result) []string {
		var out []string
		for _, e := range r.Effects {
			switch e := e.(type) {
			case ApplyNFT:
				out = append(out, "nft")
			case Failback:
				out = append(out, fmt.Sprintf("failback %s %v to %s", e.Uplink, e.Family, e.To))
				if e.Mark != 0x02000000 || e.Mask != 0x7f000000 || e.Evict != 0x7f000000 {
					t.Errorf("failback marks %#x/%#x evict %#x", e.Mark, e.Mask, e.Evict)
				}
			}
		}
		return out
	}
	_, _, moved := run(mustConfig(t, cfgText("move")), steps)
	// ppp0 has no IPv6: its IPv4 connections alone move. dsl's own
	// flap, fibre being up, changes nothing in nftables.
	want := [][]string{{"nft"}, {"nft"}, {"nft", "failback dsl IPv4 to fibre"}, nil, nil}
	for i, r := range moved {
		if got := kinds(r); !slices.Equal(got, want[i]) {
			t.Errorf("move, step %d: %v, want %v", i, got, want[i])
		}
	}
	if moved[2].State.Applied.NFT.Evict != 0x7f000000 {
		t.Errorf("the table has no evict mark: %#x", moved[2].State.Applied.NFT.Evict)
	}
	_, _, kept := run(mustConfig(t, cfgText("keep")), steps)
	for i, r := range kept {
		for _, k := range kinds(r) {
			if strings.HasPrefix(k, "failback") {
				t.Errorf("keep, step %d: %s", i, k)
			}
		}
		if r.State.Applied != nil && r.State.Applied.NFT.Evict != 0 {
			t.Errorf("keep, step %d: an evict mark in the table", i)
		}
	}
}

// A stray ip-down (a hook run by hand, pppd's demand mode keeping the
// interface) holds the uplink down for DownHintHold at most: the step
// asks to look again then, and with the interface still up, carrying
// its address, the uplink is back. One the kernel confirms (ppp0 goes)
// asks for nothing more.
func TestStrayDownHintExpires(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	both := links(fibre(), pppUp)
	_, _, res := run(cfg, []step{
		{0, Start{Links: both}},
		{time.Second, PPPEvent{Iface: "ppp0"}},
		{3 * time.Second, Observed{Links: both, Trigger: "netlink"}},
		{time.Second + DownHintHold, Observed{Links: both, Trigger: "timer"}},
	})
	observeAfter := func(r Result) (time.Duration, bool) {
		for _, e := range r.Effects {
			if o, ok := e.(ObserveAfter); ok {
				return o.After, true
			}
		}
		return 0, false
	}
	for i, want := range []time.Duration{DownHintHold, DownHintHold - 2*time.Second} {
		if got, ok := observeAfter(res[i+1]); !ok || got != want {
			t.Errorf("step %d: observe after %v %v, want %v", i+1, got, ok, want)
		}
		if res[i+1].State.Uplinks["dsl"].Up {
			t.Errorf("step %d: dsl up while its ip-down stands", i+1)
		}
	}
	last := res[3]
	if !last.State.Uplinks["dsl"].Up || len(last.State.Hints) != 0 {
		t.Errorf("after %v: dsl up %v, hints %v", DownHintHold, last.State.Uplinks["dsl"].Up, last.State.Hints)
	}
	if _, ok := observeAfter(last); ok {
		t.Errorf("an observe after the hint expired: %v", last.Effects)
	}
	if !strings.Contains(fmt.Sprint(last.Effects), "ppp ip-down not confirmed by the kernel") {
		t.Errorf("no log line for the expired hint: %v", last.Effects)
	}

	_, _, res = run(cfg, []step{
		{0, Start{Links: both}},
		{time.Second, PPPEvent{Iface: "ppp0"}},
		{time.Second + time.Millisecond, Observed{Links: links(fibre()), Trigger: "netlink"}},
	})
	if _, ok := observeAfter(res[2]); ok || len(res[2].State.Hints) != 0 {
		t.Errorf("ip-down confirmed: hints %v, effects %v", res[2].State.Hints, res[2].Effects)
	}
}

// Both uplinks lose their carrier; a LAN flow meanwhile leaves wan1 by
// the main table and is pinned there. When fibre comes back, the
// stranded entries of dsl, still down, are flushed after the apply that
// balances onto fibre; fibre's own were flushed when it went down. With
// dsl up all along, fibre's return flushes nothing.
func TestStrandedFlush(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	_, _, res := run(cfg, []step{
		{0, Start{Links: links(fibre(), pppUp)}},
		{time.Second, Observed{Links: links(noCarrier(fibre()), noCarrier(pppUp)), Trigger: "netlink"}},
		{2 * time.Second, Observed{Links: links(fibre(), noCarrier(pppUp)), Trigger: "netlink"}},
	})
	var got []string
	for _, e := range res[2].Effects {
		switch e := e.(type) {
		case ApplyNFT:
			got = append(got, "nft")
		case FlushMark:
			got = append(got, e.String())
		}
	}
	want := []string{"nft", "flush conntrack dsl IPv4 mark 0x2000000/0x7f000000 (pinned while no uplink was up)"}
	if !slices.Equal(got, want) {
		t.Errorf("fibre back, dsl still down: %q, want %q", got, want)
	}
	_, _, res = run(cfg, []step{
		{0, Start{Links: links(fibre(), pppUp)}},
		{time.Second, Observed{Links: links(noCarrier(fibre()), pppUp), Trigger: "netlink"}},
		{2 * time.Second, Observed{Links: links(fibre(), pppUp), Trigger: "netlink"}},
	})
	for _, e := range res[2].Effects {
		if _, ok := e.(FlushMark); ok {
			t.Errorf("fibre back with dsl up: %v", e)
		}
	}
}

// repins lists a result's Repin effects, and where each stands: right
// after the nftables apply, or not.
func repins(t *testing.T, r Result) []Repin {
	t.Helper()
	var out []Repin
	for i, e := range r.Effects {
		rp, ok := e.(Repin)
		if !ok {
			continue
		}
		if i == 0 {
			t.Errorf("a repin with nothing before it")
		} else if _, after := r.Effects[i-1].(ApplyNFT); !after {
			t.Errorf("repin after %s, want right after the nftables apply", r.Effects[i-1])
		}
		out = append(out, rp)
	}
	return out
}

// A reload moves the pinned connections only when some uplink's mark or
// the mask changed, right after the table that knows the new marks,
// from the marks they carry: after a failed apply the repin is owed to
// the retry, from the marks before the failed reload, also when
// another reload came between.
func TestReloadRepin(t *testing.T) {
	bothUp := links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))
	masked := mustConfig(t, "mark_mask = 0x00ff0000\n"+stepConfig)
	swapped := mustConfig(t, swappedConfig)
	s := Step(NewState(mustConfig(t, stepConfig)), t0, Start{Links: bothUp}).State
	want := func(name string, r Result, w ...Repin) State {
		t.Helper()
		if got := repins(t, r); !reflect.DeepEqual(got, w) {
			t.Errorf("%s: repins %v, want %v", name, got, w)
		}
		return r.State
	}
	// Weights and policies change nothing of the marks.
	same := want("same marks", Step(s, t0.Add(time.Second), Reload{Config: mustConfig(t, strings.Replace(stepConfig, "weight = 3", "weight = 1", 1))}))
	if same.Pinned != nil {
		t.Errorf("same marks: still pinned %+v", same.Pinned)
	}
	s1 := want("mask", Step(s, t0.Add(time.Second), Reload{Config: masked}),
		Repin{OldMask: 0x7f000000, NewMask: 0x00ff0000, Moves: []MarkMove{{"fibre", 0x01000000, 0x00010000}, {"dsl", 0x02000000, 0x00020000}}})
	// Done: the next input moves nothing again.
	s2 := want("after the mask", Step(s1, t0.Add(2*time.Second), Observed{Links: bothUp, Trigger: "netlink"}))
	if s2.Pinned != nil || s2.RepinSent {
		t.Errorf("after the repin: pinned %+v sent %v", s2.Pinned, s2.RepinSent)
	}
	want("swap", Step(s2, t0.Add(3*time.Second), Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+swappedConfig)}),
		Repin{OldMask: 0x00ff0000, NewMask: 0x00ff0000, Moves: []MarkMove{{"dsl", 0x00020000, 0x00010000}, {"fibre", 0x00010000, 0x00020000}}})
	// Removed: its connections are flushed; lte is new, nothing to move.
	want("removed", Step(s2, t0.Add(3*time.Second), Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+fibreAndLTE)}),
		Repin{OldMask: 0x00ff0000, NewMask: 0x00ff0000, Moves: []MarkMove{{"dsl", 0x00020000, 0}}})
	// An uplink added at the end moves nothing.
	want("added", Step(s2, t0.Add(3*time.Second), Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+stepConfig+"\n[[uplink]]\nname = \"lte\"\ninterface = \"wwan0\"\n")}))

	// The swap's apply fails: the kernel keeps the old table and marks.
	f1 := want("swap", Step(s, t0.Add(time.Second), Reload{Config: swapped}),
		Repin{OldMask: 0x7f000000, NewMask: 0x7f000000, Moves: []MarkMove{{"dsl", 0x02000000, 0x01000000}, {"fibre", 0x01000000, 0x02000000}}})
	f2 := want("apply failed", Step(f1, t0.Add(time.Second), ApplyFailed{Err: errors.New("applying nftables: boom")}))
	if f2.Pinned == nil || f2.RepinSent {
		t.Fatalf("after the failed apply: pinned %+v sent %v, want owed", f2.Pinned, f2.RepinSent)
	}
	// Another reload before the retry: from the marks the entries carry
	// (the first file's), to the new file's.
	f3 := want("mask after the failure", Step(f2, t0.Add(1500*time.Millisecond), Reload{Config: mustConfig(t, "mark_mask = 0x00ff0000\n"+swappedConfig)}),
		Repin{OldMask: 0x7f000000, NewMask: 0x00ff0000, Moves: []MarkMove{{"dsl", 0x02000000, 0x00010000}, {"fibre", 0x01000000, 0x00020000}}})
	f4 := want("failed again", Step(f3, t0.Add(1500*time.Millisecond), ApplyFailed{Err: errors.New("applying nftables: boom")}))
	// A step that applies nothing leaves the repin owed.
	f5 := want("neighbours", Step(f4, t0.Add(1600*time.Millisecond), Neighbours{}))
	f6 := want("retry", Step(f5, t0.Add(2500*time.Millisecond), Retry{Links: bothUp}),
		Repin{OldMask: 0x7f000000, NewMask: 0x00ff0000, Moves: []MarkMove{{"dsl", 0x02000000, 0x00010000}, {"fibre", 0x01000000, 0x00020000}}})
	f7 := want("after the retry", Step(f6, t0.Add(3*time.Second), Drift{Missing: []string{"x"}, NFT: true}))
	if f7.Pinned != nil {
		t.Errorf("after the retry's repin: pinned %+v", f7.Pinned)
	}
	// A reload back to the marks the entries carry, while owed: nothing
	// to move.
	back := want("back", Step(f2, t0.Add(1500*time.Millisecond), Reload{Config: mustConfig(t, stepConfig)}))
	if back.Pinned != nil {
		t.Errorf("back to the first marks: pinned %+v", back.Pinned)
	}
}

// An exec to an uplink that is down (here taken out of service) is
// refused, as the README says, and nothing of it is kept; once the uplink
// is back it is accepted.
func TestExecRefusedWhileDown(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))}).State
	s = Step(s, t0.Add(time.Second), SetService{Uplink: "dsl"}).State
	cg := policy.CgroupMatch{Level: 2, ID: 42}
	r := Step(s, t0.Add(2*time.Second), ExecStarted{Path: ExecRoot + "/1", Uplink: "dsl", Cgroup: cg})
	if r.Err == nil || !strings.Contains(r.Err.Error(), "is down") {
		t.Errorf("exec to a down uplink: err %v, want a refusal saying it is down", r.Err)
	}
	if len(r.State.Execs) != 0 {
		t.Errorf("a refused exec was kept: %v", r.State.Execs)
	}
	if r := Step(s, t0.Add(2*time.Second), ExecStarted{Path: ExecRoot + "/1", Uplink: "nosuch", Cgroup: cg}); r.Err == nil {
		t.Errorf("exec to an unknown uplink accepted")
	}
	s = Step(s, t0.Add(3*time.Second), SetService{Uplink: "dsl", InService: true}).State
	if r := Step(s, t0.Add(4*time.Second), ExecStarted{Path: ExecRoot + "/1", Uplink: "dsl", Cgroup: cg}); r.Err != nil || len(r.State.Execs) != 1 {
		t.Errorf("exec to an up uplink: err %v, execs %v", r.Err, r.State.Execs)
	}
}

// A lease of an interface no uplink uses is no error and changes
// nothing now; a reload that makes the interface an uplink has it.
func TestLeaseOfNoUplink(t *testing.T) {
	cfg := mustConfig(t, stepConfig)
	s := Step(NewState(cfg), t0, Start{Links: links(fibre(), ppp(7, "198.51.100.10", "198.51.100.9"))}).State
	key := LeaseKey{"lan0", inet.IPv4}
	r := Step(s, t0.Add(time.Second), LeaseEvent{Key: key, Lease: &Lease{Address: netip.MustParsePrefix("192.0.2.1/26"), Client: "dhcpcd"}})
	if r.Err != nil || len(r.Effects) != 0 {
		t.Fatalf("a lease of lan0: err %v, effects %v", r.Err, r.Effects)
	}
	if _, ok := r.State.Leases[key]; !ok {
		t.Errorf("the lease of lan0 is not kept")
	}
	r = Step(r.State, t0.Add(2*time.Second), LeaseEvent{Key: key})
	if _, ok := r.State.Leases[key]; ok || r.Err != nil {
		t.Errorf("lease-lost of lan0: err %v, still kept %v", r.Err, ok)
	}
}
