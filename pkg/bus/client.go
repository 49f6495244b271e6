package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/wanpin/wanpin/pkg/adaptive"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
)

// Timeout bounds every call: a CLI must never hang on a stuck daemon.
const Timeout = 5 * time.Second

// Client calls a running daemon.
type Client struct {
	conn *dbus.Conn
	obj  dbus.BusObject
}

// Dial connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured).
func Dial() (*Client, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("cannot reach the D-Bus system bus: %w", err)
	}
	return &Client{conn: conn, obj: conn.Object(Name, Path)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) call(ctx context.Context, method string, args ...any) *dbus.Call {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	return c.obj.CallWithContext(ctx, Interface+"."+method, 0, args...)
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (core.Status, error) {
	var js string
	var s core.Status
	if err := c.call(ctx, "Status").Store(&js); err != nil {
		return s, explain("status", err)
	}
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		return s, fmt.Errorf("status: bad answer from the daemon: %w", err)
	}
	return s, nil
}

// Explain asks the daemon where a new connection would go.
func (c *Client) Explain(ctx context.Context, f policy.Flow) (core.Explanation, error) {
	var e core.Explanation
	b, err := json.Marshal(f)
	if err != nil {
		return e, err
	}
	var js string
	if err := c.call(ctx, "Explain", string(b)).Store(&js); err != nil {
		return e, explain("explain", err)
	}
	if err := json.Unmarshal([]byte(js), &e); err != nil {
		return e, fmt.Errorf("explain: bad answer from the daemon: %w", err)
	}
	return e, nil
}

// Reload asks the daemon to re-read its configuration.
func (c *Client) Reload(ctx context.Context) error {
	return explain("reload", c.call(ctx, "Reload").Err)
}

// Event hands the daemon a hook's news.
func (c *Client) Event(ctx context.Context, kind, iface string, ea EventArgs) error {
	args := map[string]dbus.Variant{}
	if ea.Local.IsValid() {
		args["local"] = dbus.MakeVariant(ea.Local.String())
	}
	if ea.Peer.IsValid() {
		args["peer"] = dbus.MakeVariant(ea.Peer.String())
	}
	if len(ea.DNS) > 0 {
		var ds []string
		for _, a := range ea.DNS {
			ds = append(ds, a.String())
		}
		args["dns"] = dbus.MakeVariant(strings.Join(ds, ","))
	}
	if ea.Family != 0 {
		args["family"] = dbus.MakeVariant(fmt.Sprint(int(ea.Family)))
	}
	return explain("event", c.call(ctx, "Event", kind, iface, args).Err)
}

// SetService takes an uplink out of service or puts it back.
func (c *Client) SetService(ctx context.Context, uplink string, inService bool) error {
	what := "down"
	if inService {
		what = "up"
	}
	return explain(what, c.call(ctx, "SetService", uplink, inService).Err)
}

// ResetQuota starts an uplink's quota count from zero.
func (c *Client) ResetQuota(ctx context.Context, uplink string) error {
	return explain("quota reset", c.call(ctx, "ResetQuota", uplink).Err)
}

// SetQuota sets an uplink's quota to bytes, until the daemon's next
// reload, restart or period.
func (c *Client) SetQuota(ctx context.Context, uplink string, bytes uint64) error {
	return explain("quota set", c.call(ctx, "SetQuota", uplink, bytes).Err)
}

// Exec has the daemon make a fresh cgroup pinned to an uplink and move
// the calling process into it; it returns the cgroup's path (relative
// to the cgroup v2 root).
func (c *Client) Exec(ctx context.Context, uplink string) (string, error) {
	var cg string
	if err := c.call(ctx, "Exec", uplink).Store(&cg); err != nil {
		return "", explain("exec", err)
	}
	return cg, nil
}

// explain turns a D-Bus error into one line a person can act on.
func explain(what string, err error) error {
	if err == nil {
		return nil
	}
	var derr dbus.Error
	if errors.As(err, &derr) {
		msg := ""
		if len(derr.Body) > 0 {
			msg, _ = derr.Body[0].(string)
		}
		switch derr.Name {
		case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
			return ErrNotRunning
		case "org.freedesktop.DBus.Error.AccessDenied":
			return fmt.Errorf("permission denied: %s requires root", what)
		case ErrPermissionDenied:
			return fmt.Errorf("permission denied: %s", msg)
		case ErrInvalidArgs, ErrFailed:
			// The daemon's own words; the CLI names the command.
			return errors.New(msg)
		}
		if msg != "" {
			return fmt.Errorf("%s: %s (%s)", what, msg, derr.Name)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: wanpin did not answer within %v", what, Timeout)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// quotaLine is an uplink's quota in one line of the status table.
// autoWeightLine says what a weight = "auto" uplink's weight follows.
func autoWeightLine(u core.UplinkReport) string {
	est := "not measured yet"
	if u.Capacity > 0 {
		est = "estimate " + adaptive.RateText(u.Capacity)
	}
	line := fmt.Sprintf("weight auto: %d, %s", u.Weight, est)
	if u.Bandwidth > 0 {
		line += ", bandwidth " + adaptive.RateText(float64(u.Bandwidth))
	}
	if u.Evidence != "" {
		line += fmt.Sprintf("; last window %s: %s", adaptive.RateText(u.Rate), u.Evidence)
	}
	return line
}

func quotaLine(q core.QuotaReport, now time.Time) string {
	at := func(t time.Time) string { return t.In(now.Location()).Format("2006-01-02 15:04") }
	state := "available"
	if q.Exhausted {
		state = "USED UP: a last resort"
		if q.Action == "off" {
			state = "USED UP: out of service"
		}
	}
	limit := quota.FormatSize(q.Limit)
	if q.Raised {
		limit += " (set by the admin)"
	}
	pct := 0.0
	if q.Limit > 0 {
		pct = 100 * float64(q.Used) / float64(q.Limit)
	}
	return fmt.Sprintf("quota %s of %s used (%.0f%%), %s since %s, next reset %s: %s",
		quota.FormatSize(q.Used), limit, pct, q.Period, at(q.PeriodStart), at(q.NextReset), state)
}

// FormatStatus renders a status as a table a person can read: a row per
// uplink and address family. An uplink's IPv6 row is left out while it has
// no IPv6 at all (no address, no gateway, never up), which keeps IPv4-only
// routers' tables short.
func FormatStatus(s core.Status, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-8s %-4s %-5s %-10s %-16s %-16s %6s %4s %6s %8s %5s  %s\n",
		"UPLINK", "IFACE", "FAM", "STATE", "SINCE", "ADDRESS", "GATEWAY", "WEIGHT", "TIER", "PINNED", "RTT", "LOSS", "REASON")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, u := range s.Uplinks {
		fams := []struct {
			name string
			f    core.FamilyReport
		}{{"ipv4", u.IPv4}, {"ipv6", u.IPv6}}
		if u.IPv4.State == "" && u.IPv6.State == "" {
			// A daemon that reports no families: the uplink as a whole.
			fams = fams[:1]
			fams[0].f = core.FamilyReport{State: u.State, Reason: u.Reason, Since: u.Since, Gateway: u.Gateway,
				RTTms: u.RTTms, Loss: u.Loss}
			if a, err := netip.ParseAddr(u.Address); err == nil {
				fams[0].f.Addresses = []netip.Addr{a}
			}
		} else if u.IPv6.State != "up" && len(u.IPv6.Addresses) == 0 && u.IPv6.Gateway == "" && u.IPv6.RTTms == 0 && u.IPv6.Loss < 0 {
			fams = fams[:1]
		}
		for i, f := range fams {
			since := "-"
			if !f.f.Since.IsZero() {
				since = now.Sub(f.f.Since).Round(time.Second).String()
			}
			addr := ""
			if len(f.f.Addresses) > 0 {
				addr = f.f.Addresses[0].String()
			}
			rtt, loss := "-", "-"
			if f.f.RTTms > 0 {
				rtt = fmt.Sprintf("%.1fms", f.f.RTTms)
			}
			if f.f.Loss >= 0 {
				loss = fmt.Sprintf("%.0f%%", f.f.Loss*100)
			}
			name, iface, weight, tier, pinned := u.Name, u.Interface, fmt.Sprint(u.Weight), fmt.Sprint(u.Tier), fmt.Sprint(u.Pinned)
			if i > 0 {
				name, iface, weight, tier, pinned = "", "", "", "", ""
			}
			fmt.Fprintf(&b, "%-10s %-8s %-4s %-5s %-10s %-16s %-16s %6s %4s %6s %8s %5s  %s\n",
				name, iface, strings.TrimPrefix(f.name, "ip"), dash(f.f.State), since, dash(addr), dash(f.f.Gateway),
				weight, tier, pinned, rtt, loss, f.f.Reason)
		}
		if u.WeightAuto {
			fmt.Fprintf(&b, "%-10s %s\n", "", autoWeightLine(u))
		}
		if q := u.Quota; q != nil {
			fmt.Fprintf(&b, "%-10s %s\n", "", quotaLine(*q, now))
		}
		if m := u.MPTCP; m != nil {
			role := ""
			if m.Backup {
				role = " (backup)"
			}
			fmt.Fprintf(&b, "%-10s mptcp: %d endpoints, %d subflows%s\n", "", m.Endpoints, m.Subflows, role)
		}
	}
	if s.StickyTotal > 0 {
		fmt.Fprintf(&b, "\nsticky sources: %d", s.StickyTotal)
		if len(s.Sticky) < s.StickyTotal {
			fmt.Fprintf(&b, " (the %d remembered longest listed)", len(s.Sticky))
		}
		b.WriteString("\n")
		for _, e := range s.Sticky {
			who := e.Source.String()
			if e.Destination.IsValid() {
				who += " -> " + e.Destination.String()
			}
			pol := "default balancing"
			if e.Policy != "" {
				pol = "policy " + e.Policy
			}
			fmt.Fprintf(&b, "  %-40s %-10s %6.0fs left  (%s)\n", who, e.Uplink, float64(e.Left), pol)
		}
	}
	if d := s.Domains; d != nil {
		state := "learning"
		if !d.Learning {
			state = "NOT learning (answers pass unlearned)"
		}
		fmt.Fprintf(&b, "\ndomain policies: %s; %d answers held, %d re-injected, %d lost, %d unparsable; %d addresses added, %d refused\n",
			state, d.Held, d.Reinjected, d.ReinjectErrors+d.Overruns, d.ParseErrors, d.Added, d.AddErrors)
	}
	if len(s.RouteConflicts) > 0 {
		b.WriteString("\nroutes of other programs in wanpin's tables (left in place, wanpin's not installed):\n")
		for _, c := range s.RouteConflicts {
			who := "the router's own traffic"
			if c.Uplink != "" {
				who = "uplink " + c.Uplink
			}
			fmt.Fprintf(&b, "  table %d (%s): %s holds the place of %q\n", c.Table, who, c.Foreign, c.Route)
		}
	}
	if len(s.Conflicts) > 0 {
		b.WriteString("\nclashes with other programs' rules:\n")
		for _, f := range s.Conflicts {
			level := f.Level
			if f.Allowed {
				level += " (allowed)"
			}
			fmt.Fprintf(&b, "  %s: %s\n", level, f)
		}
	}
	return b.String()
}
