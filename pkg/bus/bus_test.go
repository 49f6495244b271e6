package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/wanpin/wanpin/internal/bustest"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

type fake struct {
	events []string
	reload error
}

func (f *fake) Status() (core.Status, error) {
	return core.Status{Config: "/etc/wanpin/wanpin.toml", Uplinks: []core.UplinkReport{{Name: "dsl", Interface: "ppp0", State: "up", Mark: 0x10000}}}, nil
}
func (f *fake) Explain(fl policy.Flow) (core.Explanation, error) {
	f.events = append(f.events, "explain "+fl.Dst.String())
	return core.Explanation{Outcome: core.Balanced, Choices: []core.Choice{{Uplink: "dsl", Mark: 0x10000, Share: 1}}}, nil
}
func (f *fake) Reload() error                                  { return f.reload }
func (f *fake) Exec(uplink string, pid uint32) (string, error) { return "/wanpin-exec/1", nil }
func (f *fake) SetService(uplink string, in bool) error {
	f.events = append(f.events, fmt.Sprintf("service %s %v", uplink, in))
	return nil
}
func (f *fake) Quota(uplink string, reset bool, limit uint64) error {
	if uplink == "fibre" {
		return errors.New(`uplink "fibre" has no quota`)
	}
	f.events = append(f.events, fmt.Sprintf("quota %s %v %d", uplink, reset, limit))
	return nil
}
func (f *fake) Event(kind, iface string, ea EventArgs) error {
	f.events = append(f.events, fmt.Sprintf("%s %s %v %v %v %v", kind, iface, ea.Local, ea.Peer, ea.DNS, ea.Family))
	return nil
}

// serve starts a private bus with the shipped policy and a server on it.
func serve(t *testing.T) (*fake, *Client) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the shipped policy lets only root own the name")
	}
	addr := bustest.Start(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fake{}
	srv, err := Serve(conn, f, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c, err := Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestCalls(t *testing.T) {
	f, c := serve(t)
	ctx := context.Background()
	s, err := c.Status(ctx)
	if err != nil || len(s.Uplinks) != 1 || s.Uplinks[0].Interface != "ppp0" || s.Uplinks[0].Mark != 0x10000 {
		t.Fatalf("status: %+v %v", s, err)
	}
	e, err := c.Explain(ctx, policy.Flow{Dst: netip.MustParseAddr("203.0.113.10"), Proto: 6, DPort: 443})
	if err != nil || e.Outcome != core.Balanced || len(e.Choices) != 1 || e.Choices[0].Uplink != "dsl" {
		t.Fatalf("explain: %+v %v", e, err)
	}
	f.events = nil
	if err := c.Event(ctx, "up", "ppp0", EventArgs{Local: netip.MustParseAddr("198.51.100.18"), Peer: netip.MustParseAddr("198.51.100.17"),
		DNS: []netip.Addr{netip.MustParseAddr("203.0.113.53")}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Event(ctx, "lease", "wan1", EventArgs{Family: inet.IPv6}); err != nil {
		t.Fatal(err)
	}
	if len(f.events) != 2 || f.events[0] != "up ppp0 198.51.100.18 198.51.100.17 [203.0.113.53] family(0)" ||
		f.events[1] != "lease wan1 invalid IP invalid IP [] IPv6" {
		t.Errorf("events: %q", f.events)
	}
	f.reload = errors.New("wanpin.toml:3: uplink[1].weight: weight must be 1..1000, got 0")
	if err := c.Reload(ctx); err == nil || !strings.Contains(err.Error(), "wanpin.toml:3: uplink[1].weight") {
		t.Errorf("reload of a bad file: %v", err)
	}
}

func TestInvalidEvents(t *testing.T) {
	f, c := serve(t)
	ctx := context.Background()
	for _, tc := range []struct{ kind, iface string }{
		{"sideways", "ppp0"}, {"up", ""}, {"up", "a/b"}, {"up", "averyveryverylongname"}, {"lease", "wan1"},
	} {
		// Refused, in the daemon's words only: the CLI names the command.
		err := c.Event(ctx, tc.kind, tc.iface, EventArgs{})
		if err == nil || strings.HasPrefix(err.Error(), "event: ") {
			t.Errorf("%v: %v", tc, err)
		}
	}
	// Arguments the CLI would never send, straight on the wire.
	err := c.obj.Call(Interface+".Event", 0, "up", "ppp0", map[string]dbus.Variant{"peer": dbus.MakeVariant("not-an-ip")}).Err
	if err == nil || !strings.Contains(err.Error(), "peer") {
		t.Errorf("bad peer: %v", err)
	}
	if len(f.events) != 0 {
		t.Errorf("invalid events reached the backend: %q", f.events)
	}
}

func TestSecondServerAndNoServer(t *testing.T) {
	_, c := serve(t)
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := Serve(conn, &fake{}, slog.Default()); err == nil || !strings.Contains(err.Error(), "another wanpin") {
		t.Errorf("second server: %v", err)
	}
	other := &Client{conn: c.conn, obj: c.conn.Object("org.wanpin.Nobody", Path)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := other.Status(ctx); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("no server: %v", err)
	}
}

func TestFormatStatus(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr
	s := core.Status{Uplinks: []core.UplinkReport{
		{Name: "dsl", Interface: "ppp0", State: "up", Weight: 30, Tier: 1, Pinned: 17,
			WeightAuto: true, Bandwidth: 100e6, Capacity: 24.61e6, Rate: 19.6e6, Evidence: "saturated: round trip 73.2ms over a baseline of 150µs",
			IPv4: core.FamilyReport{State: "up", Since: now.Add(-192 * time.Second), Addresses: []netip.Addr{a("198.51.100.18")},
				RTTms: 12.34, Loss: 0.05, Reason: "IPv4 198.51.100.18, point-to-point peer 198.51.100.17"},
			IPv6: core.FamilyReport{State: "down", Since: now.Add(-5 * time.Second), Addresses: []netip.Addr{a("2001:db8:102::2")},
				Gateway: "fe80::1", RTTms: 0, Loss: 1, Reason: "IPv6 health probes: 2 rounds lost"}},
		{Name: "lte", Interface: "wwan0", State: "down", Weight: 1, Tier: 2,
			IPv4: core.FamilyReport{State: "down", Reason: "interface wwan0 does not exist", Loss: -1},
			IPv6: core.FamilyReport{State: "down", Reason: "interface wwan0 does not exist", Loss: -1},
			Quota: &core.QuotaReport{Limit: 30e9, Used: 31_200_000_000, Period: "monthly", ResetDay: 15, Exhausted: true, Action: "last-resort",
				PeriodStart: time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC), NextReset: time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)}},
	}}
	got := FormatStatus(s, now)
	want := `UPLINK     IFACE    FAM  STATE SINCE      ADDRESS          GATEWAY          WEIGHT TIER PINNED      RTT  LOSS  REASON
dsl        ppp0     v4   up    3m12s      198.51.100.18    -                    30    1     17   12.3ms    5%  IPv4 198.51.100.18, point-to-point peer 198.51.100.17
                    v6   down  5s         2001:db8:102::2  fe80::1                                    -  100%  IPv6 health probes: 2 rounds lost
           weight auto: 30, estimate 24.6 Mbit/s, bandwidth 100 Mbit/s; last window 19.6 Mbit/s: saturated: round trip 73.2ms over a baseline of 150µs
lte        wwan0    v4   down  -          -                -                     1    2      0        -     -  interface wwan0 does not exist
           quota 31.2 GB of 30 GB used (104%), monthly since 2026-11-15 00:00, next reset 2026-12-15 00:00: USED UP: a last resort
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// ResetQuota and SetQuota reach the backend with their arguments; its
// refusal comes back in its own words; a zero quota never reaches it.
func TestQuotaCalls(t *testing.T) {
	f, c := serve(t)
	ctx := context.Background()
	if err := c.ResetQuota(ctx, "lte"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetQuota(ctx, "lte", 30e9); err != nil {
		t.Fatal(err)
	}
	if err := c.SetQuota(ctx, "lte", 0); err == nil || !strings.Contains(err.Error(), "at least 1 byte") {
		t.Errorf("zero: %v", err)
	}
	if err := c.ResetQuota(ctx, "fibre"); err == nil || err.Error() != `uplink "fibre" has no quota` {
		t.Errorf("no quota: %v", err)
	}
	if want := []string{"quota lte true 0", "quota lte false 30000000000"}; strings.Join(f.events, "|") != strings.Join(want, "|") {
		t.Errorf("calls: %q, want %q", f.events, want)
	}
}

// An up event's addresses must be unicast and without a zone: the peer
// becomes the uplink's gateway, and the kernel refuses a multicast,
// loopback or unspecified one (every apply failed) or stores a zoned one
// without its zone (drift repair forever).
func TestCheckEventAddresses(t *testing.T) {
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"198.51.100.9", true}, {"10.64.64.64", true}, {"fe80::1", true}, {"2001:db8::1", true},
		{"::ffff:198.51.100.9", true}, {"169.254.1.1", true},
		{"fe80::1%wan1", false}, {"224.0.0.1", false}, {"ff02::1", false}, {"0.0.0.0", false},
		{"::", false}, {"127.0.0.1", false}, {"::1", false}, {"255.255.255.255", false},
	} {
		for _, key := range []string{"local", "peer"} {
			ea, err := checkEvent("up", "ppp0", map[string]any{key: c.addr})
			if (err == nil) != c.ok {
				t.Errorf("%s %s: err %v, want ok %v", key, c.addr, err, c.ok)
			}
			if err == nil && (ea.Local.Is4In6() || ea.Peer.Is4In6()) {
				t.Errorf("%s %s: kept as a mapped address: %+v", key, c.addr, ea)
			}
		}
	}
}
