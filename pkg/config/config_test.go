package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
)

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := Parse("test.toml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func TestExampleParses(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "wanpin.toml")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("the example does not parse:\n%v", err)
	}
	want := &Config{
		Path:         path,
		MarkMask:     0x7f000000,
		RulePriority: 10000, RouterTraffic: RouterBalance, DomainTTLFloor: DefaultDomainTTLFloor, DomainNFLOGGroup: DefaultDomainNFLOGGroup,
		LANPrefix6: netip.MustParsePrefix("fd00:1::/64"),
		Uplinks: []Uplink{
			{Name: "dsl1", Interface: "ppp0", Weight: 2, Tier: 1, Masquerade: true, Line: 29,
				Nat6: Nat6None, Prefix6: netip.MustParsePrefix("2001:db8:d1::/56"),
				Health: &HealthConfig{Method: "icmp", Targets: MustTargets("icmp", "198.51.100.53", "203.0.113.53", "2001:db8:53::53"), DNSName: ".",
					Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout, DownAfter: DefaultHealthDownAfter,
					UpAfter: DefaultHealthUpAfter, Quorum: 1, Window: DefaultHealthWindow, HoldDown: DefaultHealthHoldDown}},
			{Name: "dsl2", Interface: "ppp1", Weight: 1, Tier: 1, Masquerade: true, Line: 44,
				Nat6: Nat6Prefix, Prefix6: netip.MustParsePrefix("2001:db8:d2:1::/64")},
			{Name: "lte", Interface: "wwan0", Gateway4: netip.MustParseAddr("192.168.8.1"), Weight: 1, Tier: 2,
				Table: 210, Masquerade: true, Nat6: Nat6Masquerade, Line: 51,
				Quota: &Quota{Limit: 30e9, Period: quota.Monthly, ResetDay: 15, Action: QuotaLastResort}},
		},
		Policies: []Policy{
			{Name: "p2p", Match: policy.Match{UIDs: []uint32{0}, Services: []string{"transmission-daemon.service"}},
				Uplinks: []string{"dsl1", "dsl2"}, FallbackNone: true, Line: 69},
			{Name: "office-vpn", Match: policy.Match{
				Sources:      []netip.Prefix{netip.MustParsePrefix("192.0.2.20/32")},
				InInterfaces: []string{"lan1"},
				Destinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:10::/48")},
				Protocol:     policy.ProtoUDP,
				Ports:        []policy.PortRange{{First: 1194, Last: 1194}, {First: 51820, Last: 51821}}},
				Uplinks: []string{"dsl1"},
				Line:    78},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, "[[uplink]]\nname = \"dsl1\"\ninterface = \"ppp0\"\n\n[[policy]]\nname = \"all\"\nprotocol = \"any\"\n")
	want := &Config{
		Path:         "test.toml",
		MarkMask:     DefaultMarkMask,
		RulePriority: DefaultRulePriority, RouterTraffic: RouterBalance, DomainTTLFloor: DefaultDomainTTLFloor, DomainNFLOGGroup: DefaultDomainNFLOGGroup,
		Uplinks:  []Uplink{{Name: "dsl1", Interface: "ppp0", Weight: 1, Tier: 1, Masquerade: true, Nat6: Nat6Masquerade, Line: 1}},
		Policies: []Policy{{Name: "all", Match: policy.Match{Protocol: policy.ProtoAny}, Line: 5}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	if cfg.Uplinks[0].Gateway4.IsValid() || cfg.Uplinks[0].Gateway6.IsValid() {
		t.Errorf("gateway not configured but valid: %v", cfg.Uplinks[0].Gateway4)
	}
	if got := cfg.MarkShift(); got != 24 {
		t.Errorf("MarkShift = %d, want 24", got)
	}
	if got := cfg.UplinkMark(0); got != 0x01000000 {
		t.Errorf("UplinkMark(0) = %#x, want 0x1000000", got)
	}
}

func TestValues(t *testing.T) {
	cfg := mustParse(t, `
mark_mask = 0xf0          # 4 bits: marks 0x10 .. 0xf0
rule_priority = 31765     # the highest allowed
lan_prefix6 = "fd00:1::/64"

[[uplink]]
name = "a"
interface = "eth0"
gateway6 = "2001:db8::1"
nat6 = "prefix"
prefix6 = "2001:db8:d1:5::/64"
weight = 1000
tier = 100
table = 4294967295
masquerade = false

[[uplink]]
name = "b_2"
interface = "eth1"
gateway = "::ffff:198.51.100.1"
gateway6 = "fe80::1"
nat6 = "none"
prefix6 = "2001:db8:d2::/56"

[[policy]]
name = "own"
users = ["root", "1001", 4294967294]
groups = ["0", 7]
services = ["getty@tty1.service", "user.slice", "session-2.scope", "/system.slice/cron.service", "/"]
destinations = ["198.51.100.7", "2001:db8::/32", "203.0.113.0/24"]
protocol = "tcp"
ports = [22, "80", "6881-6889", "65535"]
uplinks = ["b_2", "a"]
fallback = "none"

[[policy]]
name = "fwd"
sources = ["192.0.2.0/25", "192.0.2.128/25", "2001:db8:1::/48"]
in_interfaces = ["lan1", "wg0"]
protocol = "udp"
`)
	if cfg.MarkMask != 0xf0 || cfg.RulePriority != 31765 {
		t.Errorf("mark_mask %#x, rule_priority %d", cfg.MarkMask, cfg.RulePriority)
	}
	if got := []uint32{cfg.UplinkMark(0), cfg.UplinkMark(1)}; !reflect.DeepEqual(got, []uint32{0x10, 0x20}) {
		t.Errorf("marks %#x", got)
	}
	a, b := cfg.Uplinks[0], cfg.Uplinks[1]
	if a.Gateway6 != netip.MustParseAddr("2001:db8::1") || a.Gateway4.IsValid() || a.Weight != 1000 || a.Tier != 100 ||
		a.Table != 4294967295 || a.Masquerade || a.Line != 6 || a.Nat6 != Nat6Prefix ||
		a.Prefix6 != netip.MustParsePrefix("2001:db8:d1:5::/64") || cfg.LANPrefix6 != netip.MustParsePrefix("fd00:1::/64") {
		t.Errorf("uplink a: %+v", a)
	}
	// A v4-mapped gateway is the v4 address: routes are per family.
	if b.Gateway4 != netip.MustParseAddr("198.51.100.1") || b.Table != 0 || !b.Masquerade ||
		b.Gateway6 != netip.MustParseAddr("fe80::1") || b.Nat6 != Nat6None {
		t.Errorf("uplink b: %+v", b)
	}
	own, fwd := cfg.Policies[0], cfg.Policies[1]
	want := Policy{
		Name: "own",
		Match: policy.Match{
			UIDs:     []uint32{0, 1001, 4294967294},
			GIDs:     []uint32{0, 7},
			Services: []string{"getty@tty1.service", "user.slice", "session-2.scope", "/system.slice/cron.service", "/"},
			Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("2001:db8::/32"),
				netip.MustParsePrefix("203.0.113.0/24")},
			Protocol: policy.ProtoTCP,
			Ports: []policy.PortRange{{First: 22, Last: 22}, {First: 80, Last: 80}, {First: 6881, Last: 6889},
				{First: 65535, Last: 65535}},
		},
		Uplinks:      []string{"b_2", "a"},
		FallbackNone: true,
		Line:         25,
	}
	if !reflect.DeepEqual(own, want) {
		t.Errorf("policy own:\ngot  %+v\nwant %+v", own, want)
	}
	if len(fwd.Sources) != 3 || !reflect.DeepEqual(fwd.InInterfaces, []string{"lan1", "wg0"}) ||
		fwd.Protocol != policy.ProtoUDP || fwd.Uplinks != nil || fwd.FallbackNone {
		t.Errorf("policy fwd: %+v", fwd)
	}
}

// The default mask has 8 bits: room for 255 uplinks, more than
// MaxUplinks. A narrower mask has room for fewer: the uplink that does not
// fit is pointed at.
func TestMarkRoomDefault(t *testing.T) {
	uplinks := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "[[uplink]]\nname = \"u%d\"\ninterface = \"eth%d\"\n", i, i)
		}
		return b.String()
	}
	cfg := mustParse(t, uplinks(MaxUplinks))
	if got := cfg.UplinkMark(MaxUplinks - 1); got&^DefaultMarkMask != 0 || got == 0 {
		t.Errorf("last mark %#x, outside the default mask", got)
	}
	if MaxUplinks >= 255 {
		_, err := Parse("big.toml", []byte(uplinks(256)))
		want := "big.toml:766: uplink[256]: too many uplinks: the default mark_mask 0x00ff0000 has room for 255; set a wider mark_mask"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant %s", err, want)
		}
	}
	// Three bits: 7 uplinks.
	if _, err := Parse("three.toml", []byte("mark_mask = 0x00070000\n"+uplinks(7))); err != nil {
		t.Errorf("three bits, 7 uplinks: %v", err)
	}
	_, err := Parse("three.toml", []byte("mark_mask = 0x00070000\n"+uplinks(8)))
	if want := "three.toml:1: mark_mask: mark_mask 0x00070000 has room for 7 uplinks, 8 are configured"; err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	// A mark mask of one bit: one uplink.
	if _, err := Parse("one.toml", []byte("mark_mask = 0x80000000\n"+uplinks(1))); err != nil {
		t.Errorf("one bit, one uplink: %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{"f.toml", 3, "uplink[1].weight", "weight must be 1..1000, got 0"}, "f.toml:3: uplink[1].weight: weight must be 1..1000, got 0"},
		{Error{"f.toml", 0, "uplink", "no [[uplink]]: at least one is required"}, "f.toml: uplink: no [[uplink]]: at least one is required"},
		{Error{"f.toml", 7, "", "syntax error: x"}, "f.toml:7: syntax error: x"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	errs := Errors{{"f", 1, "a", "x"}, {"f", 2, "b", "y"}}
	if got := errs.Error(); got != "f:1: a: x\nf:2: b: y" {
		t.Errorf("Errors: %q", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

// A syntax error stops parsing: the semantic problems after it are not
// reported, since the tree they would be found in is incomplete.
func TestSyntaxErrorAlone(t *testing.T) {
	_, err := Parse("s.toml", []byte("[[uplink]]\nname = \"BAD NAME\"\nweight = 0\nx = = 1\n"))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Line != 4 || !strings.HasPrefix(errs[0].Msg, "syntax error: ") {
		t.Errorf("got %#v", err)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"weight", "users", "uplinks", "interface"}
	for name, want := range map[string]string{
		"weigth": "weight", "user": "users", "uplink": "uplinks", "interfce": "interface",
		"note": "", "x": "", "wait": "",
	} {
		if got := suggest(name, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestHealthDefaults(t *testing.T) {
	cfg, err := Parse("h.toml", []byte(`[[uplink]]
name = "dsl1"
interface = "ppp0"

[uplink.health]
targets = ["203.0.113.1", "2001:db8:ff::1"]

[[uplink]]
name = "cable"
interface = "wan2"

[uplink.health]
method = "tcp"
targets = ["203.0.113.1:443"]
interval = "1s"
timeout = "800ms"
hold_down = "0s"
`))
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Uplinks[0].Health
	if h == nil || h.Method != "icmp" || h.Interval != DefaultHealthInterval || h.Timeout != DefaultHealthTimeout ||
		h.DownAfter != 2 || h.UpAfter != 3 || h.Quorum != 1 || h.HoldDown != DefaultHealthHoldDown || len(h.Targets) != 2 {
		t.Errorf("defaults: %+v", h)
	}
	// Worst-case detection with the defaults (see the constants): at most 1.5 s.
	if worst := time.Duration(h.DownAfter)*h.Interval + h.Timeout; worst > 1500*time.Millisecond {
		t.Errorf("worst-case detection %v", worst)
	}
	if h := cfg.Uplinks[1].Health; h.Method != "tcp" || h.Interval != time.Second || h.HoldDown != 0 {
		t.Errorf("tcp: %+v", h)
	}
	if cfg.Uplinks[1].Health == cfg.Uplinks[0].Health {
		t.Error("health tables shared")
	}
}

func TestHealthMethods(t *testing.T) {
	cfg, err := Parse("h.toml", []byte(`[[uplink]]
name = "a"
interface = "wan1"
[uplink.health]
method = "dns"
targets = ["203.0.113.53", "203.0.113.54:5353", "2001:db8::53", "[2001:db8::54]:53"]
dns_name = "example.net"
quorum = 4
max_loss = 12.5
max_rtt = "250ms"

[[uplink]]
name = "b"
interface = "wan2"
[uplink.health]
method = "http"
targets = ["http://203.0.113.1/", "http://[2001:db8::1]:8080/health?x=1"]
window = 20

[[uplink]]
name = "c"
interface = "wan3"
[uplink.health]
method = "tcp"
targets = ["203.0.113.1:443", "[2001:db8::1]:22"]
interval = "1s"
timeout = "1s"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := cfg.Uplinks[0].Health, cfg.Uplinks[1].Health, cfg.Uplinks[2].Health
	if a.Method != "dns" || len(a.Targets) != 4 || a.DNSName != "example.net" || a.Quorum != 4 ||
		a.MaxLoss != 12.5 || a.MaxRTT != 250*time.Millisecond {
		t.Errorf("dns: %+v", a)
	}
	if b.Method != "http" || len(b.Targets) != 2 || b.Window != 20 || b.DNSName != "." {
		t.Errorf("http: %+v", b)
	}
	if c.Method != "tcp" || c.Interval != time.Second || c.Timeout != time.Second {
		t.Errorf("tcp: %+v", c)
	}
	if cfg.Uplinks[0].Health == nil || mustParse(t, "[[uplink]]\nname = \"x\"\ninterface = \"wan1\"\n").Uplinks[0].Health != nil {
		t.Error("health must be nil exactly when the table is absent")
	}
}

// dns_name = "." (the default) is accepted with any method, as the README's
// table of every key shows it; another name needs method "dns".
func TestHealthDNSNameDefaultWithICMP(t *testing.T) {
	src := "[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\n[uplink.health]\ntargets = [\"203.0.113.1\"]\ndns_name = \".\"\n"
	if h := mustParse(t, src).Uplinks[0].Health; h.Method != "icmp" || h.DNSName != "." {
		t.Errorf("%+v", h)
	}
}

func TestSourcePorts(t *testing.T) {
	cfg := mustParse(t, "[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\n\n[[policy]]\nname = \"wg\"\nprotocol = \"udp\"\nsource_ports = [\"51820\", 51821, \"60000-60010\"]\n")
	want := []policy.PortRange{{First: 51820, Last: 51820}, {First: 51821, Last: 51821}, {First: 60000, Last: 60010}}
	if got := cfg.Policies[0].SourcePorts; !reflect.DeepEqual(got, want) {
		t.Errorf("source_ports %v, want %v", got, want)
	}
}

func TestRouterTrafficAndDNS(t *testing.T) {
	cfg := mustParse(t, "router_traffic = \"main\"\n[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\ndns = [\"203.0.113.53\", \"2001:db8:53::1\"]\n")
	if cfg.RouterTraffic != RouterMain || len(cfg.Uplinks[0].DNS) != 2 || cfg.Uplinks[0].DNS[1] != netip.MustParseAddr("2001:db8:53::1") {
		t.Errorf("%+v", cfg)
	}
}

// failback: "keep" or "move"; a move needs a mark value of its own.
func TestFailbackKey(t *testing.T) {
	cfg, err := Parse("f.toml", []byte("[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n\n[[uplink]]\nname = \"b\"\ninterface = \"wwan0\"\ntier = 2\nfailback = \"move\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Failback() || cfg.Uplinks[1].Failback != FailbackMove || cfg.Uplinks[0].Failback != "" || cfg.EvictMark() != DefaultMarkMask {
		t.Errorf("parsed %+v", cfg.Uplinks)
	}
	_, err = Parse("f.toml", []byte("[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\nfailback = \"sometimes\"\n"))
	if want := `f.toml:4: uplink[1].failback: failback must be "keep" or "move", got "sometimes"`; err == nil || err.Error() != want {
		t.Errorf("bad value: %v, want %s", err, want)
	}
	three := "mark_mask = 0x00030000\n"
	for i, n := range []string{"a", "b", "c"} {
		three += fmt.Sprintf("[[uplink]]\nname = %q\ninterface = \"eth%d\"\n", n, i)
	}
	if _, err := Parse("f.toml", []byte(three)); err != nil {
		t.Fatalf("three uplinks in two bits: %v", err)
	}
	_, err = Parse("f.toml", []byte(three+"failback = \"move\"\n"))
	if want := `f.toml:11: uplink[3].failback: failback = "move" needs a mark value of its own: mark_mask 0x00030000 has room for 2 uplinks besides it, 3 are configured; set a wider mark_mask`; err == nil || err.Error() != want {
		t.Errorf("no room: %v, want %s", err, want)
	}
}

func TestStickyKeys(t *testing.T) {
	up := "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n\n[[uplink]]\nname = \"b\"\ninterface = \"eth1\"\n"
	cfg, err := Parse("f.toml", []byte("sticky = \"10m\"\n"+up+"\n[[policy]]\nname = \"bank\"\nports = [443]\nsticky = \"1h\"\nsticky_by = \"source+destination\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sticky != (Sticky{Timeout: 10 * time.Minute}) || cfg.Policies[0].Sticky != (Sticky{Timeout: time.Hour, ByDestination: true}) {
		t.Errorf("parsed %+v and %+v", cfg.Sticky, cfg.Policies[0].Sticky)
	}
	for _, c := range []struct{ file, want string }{
		{"sticky = \"1ms\"\n" + up, `f.toml:1: sticky: sticky must be between 1s and 168h (7 days), got 1ms`},
		{"sticky = 600\n" + up, `f.toml:1: sticky: sticky must be a duration like "500ms", got integer 600`},
		{"sticky = \"8d\"\n" + up, `f.toml:1: sticky: sticky: "8d" is not a duration like "500ms" or "2s"`},
		{"sticky_by = \"source\"\n" + up, `f.toml:1: sticky_by: sticky_by needs sticky (a duration like "10m")`},
		{up + "\n[[policy]]\nname = \"p\"\nports = [443]\nsticky = \"1m\"\nsticky_by = \"site\"\n", `f.toml:13: policy "p".sticky_by: sticky_by must be "source" or "source+destination", got "site"`},
		{up + "\n[[policy]]\nname = \"default\"\nports = [443]\n", `f.toml:10: policy[1].name: name "default" is the default balancing's: choose another`},
	} {
		_, err := Parse("f.toml", []byte(c.file))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q:\n got %v\nwant %s", c.file, err, c.want)
		}
	}
}

// The quota keys: a size with a unit, its period, reset day and action;
// each bad value named with its file:line and key.
func TestQuotaKeys(t *testing.T) {
	base := "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n\n[[uplink]]\nname = \"lte\"\ninterface = \"wwan0\"\n"
	cfg := mustParse(t, base+"quota = \"20GB\"\n")
	if q := cfg.Uplinks[1].Quota; cfg.Uplinks[0].Quota != nil || q == nil || *q != (Quota{Limit: 20e9, Period: quota.Monthly, ResetDay: 1, Action: QuotaLastResort}) {
		t.Errorf("defaults: %+v", cfg.Uplinks[1].Quota)
	}
	cfg = mustParse(t, base+"quota = \"1.5 GiB\"\nquota_period = \"monthly\"\nquota_reset_day = 31\nquota_action = \"off\"\n")
	if q := cfg.Uplinks[1].Quota; *q != (Quota{Limit: 3 << 29, Period: quota.Monthly, ResetDay: 31, Action: QuotaOff}) {
		t.Errorf("monthly: %+v", q)
	}
	cfg = mustParse(t, base+"quota = \"500MB\"\nquota_period = \"daily\"\n")
	if q := cfg.Uplinks[1].Quota; *q != (Quota{Limit: 500e6, Period: quota.Daily, ResetDay: 1, Action: QuotaLastResort}) {
		t.Errorf("daily: %+v", q)
	}
	for _, c := range []struct{ text, want string }{
		{"quota = \"20KB\"\n", `q.toml:8: uplink[2].quota: "20KB": unit "KB" is not one of B, kB, MB, GB, TB, KiB, MiB, GiB, TiB`},
		{"quota = \"20\"\n", `q.toml:8: uplink[2].quota: "20" has no unit: want one of B, kB, MB, GB, TB, KiB, MiB, GiB, TiB`},
		{"quota = 20000000000\n", `q.toml:8: uplink[2].quota: quota must be a size with a unit, e.g. "20GB" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), got integer 20000000000`},
		{"quota = \"0GB\"\n", `q.toml:8: uplink[2].quota: "0GB": a quota must be at least 1 byte`},
		{"quota = \"0.5B\"\n", `q.toml:8: uplink[2].quota: "0.5B" is not a whole number of bytes`},
		{"quota = \"20GB\"\nquota_period = \"weekly\"\n", `q.toml:9: uplink[2].quota_period: quota_period must be "monthly" or "daily", got "weekly"`},
		{"quota = \"20GB\"\nquota_reset_day = 32\n", `q.toml:9: uplink[2].quota_reset_day: quota_reset_day must be 1..31, got 32`},
		{"quota = \"20GB\"\nquota_reset_day = 0\n", `q.toml:9: uplink[2].quota_reset_day: quota_reset_day must be 1..31, got 0`},
		{"quota = \"20GB\"\nquota_reset_day = \"15\"\n", `q.toml:9: uplink[2].quota_reset_day: quota_reset_day must be an integer, got string "15"`},
		{"quota = \"20GB\"\nquota_period = \"daily\"\nquota_reset_day = 15\n", `q.toml:10: uplink[2].quota_reset_day: quota_reset_day is for quota_period = "monthly": a daily quota starts again every midnight`},
		{"quota = \"20GB\"\nquota_action = \"throttle\"\n", `q.toml:9: uplink[2].quota_action: quota_action must be "last-resort" or "off", got "throttle"`},
		{"quota_period = \"daily\"\n", `q.toml:8: uplink[2].quota_period: quota_period needs quota (e.g. quota = "20GB")`},
		{"quota_reset_day = 3\n", `q.toml:8: uplink[2].quota_reset_day: quota_reset_day needs quota (e.g. quota = "20GB")`},
		{"quota_action = \"off\"\n", `q.toml:8: uplink[2].quota_action: quota_action needs quota (e.g. quota = "20GB")`},
		{"quotas = \"20GB\"\n", `q.toml:8: uplink[2].quotas: unknown key (did you mean quota?)`},
	} {
		_, err := Parse("q.toml", []byte(base+c.text))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q:\n got %v\nwant %s", c.text, err, c.want)
		}
	}
}

// The domain keys: names normalised and checked, the floor and group
// bounded, a domain policy without destinations.
func TestDomainKeys(t *testing.T) {
	up := "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n\n[[uplink]]\nname = \"b\"\ninterface = \"eth1\"\n"
	cfg, err := Parse("f.toml", []byte("domain_ttl_floor = \"30s\"\ndomain_nflog_group = 77\n"+up+
		"\n[[policy]]\nname = \"tv\"\ndomains = [\"Example.COM.\", \"video.example.net\"]\nuplinks = [\"b\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DomainTTLFloor != 30*time.Second || cfg.DomainNFLOGGroup != 77 || !cfg.Domains() ||
		!slices.Equal(cfg.Policies[0].Domains, []string{"example.com", "video.example.net"}) {
		t.Errorf("parsed floor %s, group %d, domains %q", cfg.DomainTTLFloor, cfg.DomainNFLOGGroup, cfg.Policies[0].Domains)
	}
	pol := "\n[[policy]]\nname = \"tv\"\n"
	for _, c := range []struct{ file, want string }{
		{"domain_ttl_floor = \"2h\"\n" + up, `f.toml:1: domain_ttl_floor: domain_ttl_floor must be between 1s and 1h, got 2h0m0s`},
		{"domain_ttl_floor = 60\n" + up, `f.toml:1: domain_ttl_floor: domain_ttl_floor must be a duration like "500ms", got integer 60`},
		{"domain_nflog_group = 0\n" + up, `f.toml:1: domain_nflog_group: domain_nflog_group must be 1..65535, got 0`},
		{up + pol + "domains = [\"*.example.com\"]\n", `f.toml:11: policy "tv".domains: "*.example.com" is not a domain name: no wildcards: a domain matches its subdomains already`},
		{up + pol + "domains = [\"example.com\", \"EXAMPLE.com\"]\n", `f.toml:11: policy "tv".domains: "example.com" is listed twice`},
		{up + pol + "domains = [\"bad..name\"]\n", `f.toml:11: policy "tv".domains: "bad..name" is not a domain name: empty label`},
		{up + pol + "domains = [42]\n", `f.toml:11: policy "tv".domains: domains entries must be strings, got integer 42`},
		{up + pol + "domains = []\n", `f.toml:11: policy "tv".domains: domains must not be empty: leave it out to match anything`},
		{up + pol + "destinations = [\"203.0.113.0/24\"]\ndomains = [\"example.com\"]\n", `f.toml:12: policy "tv".domains: domains and destinations in one policy would match only addresses both listed and learned: give each its own policy`},
	} {
		_, err := Parse("f.toml", []byte(c.file))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q:\n got %v\nwant %s", c.file, err, c.want)
		}
	}
}

func TestMPTCPKeys(t *testing.T) {
	up := "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n\n[[uplink]]\nname = \"b\"\ninterface = \"eth1\"\n"
	cfg := mustParse(t, "mptcp = true\n"+up+"mptcp = false\n")
	if !cfg.MPTCP || cfg.Uplinks[0].NoMPTCP || !cfg.Uplinks[1].NoMPTCP {
		t.Errorf("parsed mptcp %v, uplinks opted out %v %v", cfg.MPTCP, cfg.Uplinks[0].NoMPTCP, cfg.Uplinks[1].NoMPTCP)
	}
	for _, c := range []struct{ file, want string }{
		{up + "mptcp = true\n", `f.toml:8: uplink[2].mptcp: mptcp on an uplink only opts out (mptcp = false) of mptcp = true at the top level`},
		{"mptcp = \"yes\"\n" + up, `f.toml:1: mptcp: mptcp must be true or false, got string "yes"`},
	} {
		_, err := Parse("f.toml", []byte(c.file))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q:\n got %v\nwant %s", c.file, err, c.want)
		}
	}
}

// weight = "auto" with and without a bandwidth; fixed weights in
// another tier are fine.
func TestAutoWeight(t *testing.T) {
	cfg, err := Parse("wanpin.toml", []byte(`
[[uplink]]
name = "fibre"
interface = "wan1"
weight = "auto"
bandwidth = "80Mbit"

[uplink.health]
targets = ["203.0.113.1"]

[[uplink]]
name = "dsl"
interface = "ppp0"
weight = "auto"

[uplink.health]
targets = ["203.0.113.2"]

[[uplink]]
name = "lte"
interface = "wwan0"
tier = 2
weight = 5
`))
	if err != nil {
		t.Fatal(err)
	}
	got := [][3]any{}
	for _, u := range cfg.Uplinks {
		got = append(got, [3]any{u.Weight, u.AutoWeight, u.Bandwidth})
	}
	want := [][3]any{{0, true, uint64(80e6)}, {0, true, uint64(0)}, {5, false, uint64(0)}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("weights, auto, bandwidths: %v, want %v", got, want)
	}
}
