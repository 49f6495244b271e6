package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/ifname"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// Backend is what the daemon offers; calls are made one at a time per
// D-Bus request.
type Backend interface {
	Status() (core.Status, error)
	Explain(policy.Flow) (core.Explanation, error)
	Reload() error
	Event(kind, iface string, args EventArgs) error
	SetService(uplink string, inService bool) error
	// Quota resets an uplink's quota count (reset) or sets its limit.
	Quota(uplink string, reset bool, limit uint64) error
	Exec(uplink string, pid uint32) (cgroup string, err error)
}

// Server exports the interface on one bus connection.
type Server struct {
	conn    *dbus.Conn
	b       Backend
	log     *slog.Logger
	callers *callers // who called, and the unprivileged users' budgets (limit.go)
}

// object is what godbus exports: its exported methods are the D-Bus
// methods. A dbus.Sender parameter is filled in by the library.
type object struct{ s *Server }

// Serve exports the interface on conn and takes the well-known name.
func Serve(conn *dbus.Conn, b Backend, log *slog.Logger) (*Server, error) {
	s := &Server{conn: conn, b: b, log: log, callers: newCallers()}
	obj := object{s}
	if err := conn.Export(obj, Path, Interface); err != nil {
		return nil, fmt.Errorf("exporting %s: %w", Path, err)
	}
	node := &introspect.Node{
		Name: Path,
		Interfaces: []introspect.Interface{
			introspect.IntrospectData,
			{Name: Interface, Methods: introspect.Methods(obj)},
		},
	}
	if err := conn.Export(introspect.NewIntrospectable(node), Path, "org.freedesktop.DBus.Introspectable"); err != nil {
		return nil, fmt.Errorf("exporting introspection: %w", err)
	}
	reply, err := conn.RequestName(Name, dbus.NameFlagDoNotQueue)
	if err != nil {
		return nil, fmt.Errorf("requesting %s on the bus: %w", Name, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return nil, fmt.Errorf("another wanpin owns %s on the bus", Name)
	}
	return s, nil
}

// Close releases the name.
func (s *Server) Close() {
	_, _ = s.conn.ReleaseName(Name)
}

// Status returns the daemon's status as JSON. Anyone may call it.
func (o object) Status() (string, *dbus.Error) {
	st, err := o.s.b.Status()
	if err != nil {
		return "", dbus.NewError(ErrFailed, []any{err.Error()})
	}
	b, err := json.Marshal(st)
	if err != nil {
		return "", dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return string(b), nil
}

// MaxFlowJSON bounds an Explain argument: a flow is a few hundred bytes.
const MaxFlowJSON = 4096

// Explain says where a new connection described by flow (JSON, as
// policy.Flow marshals) would go. Anyone may call it: it reads the
// daemon's published state and costs a bounded evaluation, at most
// ExplainRate a second for each user but root.
func (o object) Explain(sender dbus.Sender, flow string) (string, *dbus.Error) {
	if derr := o.s.limitExplain(sender); derr != nil {
		return "", derr
	}
	f, err := checkFlow(flow)
	if err != nil {
		return "", dbus.NewError(ErrInvalidArgs, []any{err.Error()})
	}
	e, err := o.s.b.Explain(f)
	if err != nil {
		return "", dbus.NewError(ErrFailed, []any{err.Error()})
	}
	b, err := json.Marshal(e)
	if err != nil {
		return "", dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return string(b), nil
}

// checkFlow decodes and checks an Explain argument.
func checkFlow(s string) (policy.Flow, error) {
	var f policy.Flow
	if len(s) > MaxFlowJSON {
		return f, fmt.Errorf("flow: %d bytes, at most %d", len(s), MaxFlowJSON)
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("flow: %v", err)
	}
	switch {
	case !f.Dst.IsValid():
		return f, errors.New("flow: dst is required")
	case f.Src.IsValid() && inet.Of(f.Src) != inet.Of(f.Dst):
		return f, errors.New("flow: src and dst are of different families")
	case len(f.Cgroups) > 256:
		return f, errors.New("flow: more than 256 cgroup levels")
	case f.InIface != "" && ifname.Check(f.InIface) != nil:
		return f, fmt.Errorf("flow: iif %q is not a valid interface name", f.InIface)
	}
	return f, nil
}

// Reload re-reads the configuration. Root only.
func (o object) Reload(sender dbus.Sender) *dbus.Error {
	if derr := o.s.requireRoot(sender, "reload"); derr != nil {
		return derr
	}
	if err := o.s.b.Reload(); err != nil {
		return dbus.NewError(ErrFailed, []any{"refused, the running configuration stays: " + err.Error()})
	}
	return nil
}

// Event takes news from the PPP and DHCP client hooks. Root only.
func (o object) Event(sender dbus.Sender, kind, iface string, args map[string]dbus.Variant) *dbus.Error {
	if derr := o.s.requireRoot(sender, "event"); derr != nil {
		return derr
	}
	vals := make(map[string]any, len(args))
	for k, v := range args {
		vals[k] = v.Value()
	}
	ea, err := checkEvent(kind, iface, vals)
	if err != nil {
		return dbus.NewError(ErrInvalidArgs, []any{err.Error()})
	}
	if err := o.s.b.Event(kind, iface, ea); err != nil {
		return dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return nil
}

// SetService takes an uplink out of service or puts it back. Root only.
func (o object) SetService(sender dbus.Sender, uplink string, inService bool) *dbus.Error {
	if derr := o.s.requireRoot(sender, "up/down"); derr != nil {
		return derr
	}
	if err := o.s.b.SetService(uplink, inService); err != nil {
		return dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return nil
}

// ResetQuota starts an uplink's quota count from zero (wanpin quota
// reset). Root only.
func (o object) ResetQuota(sender dbus.Sender, uplink string) *dbus.Error {
	if derr := o.s.requireRoot(sender, "quota reset"); derr != nil {
		return derr
	}
	if err := o.s.b.Quota(uplink, true, 0); err != nil {
		return dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return nil
}

// SetQuota sets an uplink's quota to bytes until the next reload,
// restart or period (wanpin quota set). Root only.
func (o object) SetQuota(sender dbus.Sender, uplink string, bytes uint64) *dbus.Error {
	if derr := o.s.requireRoot(sender, "quota set"); derr != nil {
		return derr
	}
	if bytes == 0 {
		return dbus.NewError(ErrInvalidArgs, []any{"a quota must be at least 1 byte"})
	}
	if err := o.s.b.Quota(uplink, false, bytes); err != nil {
		return dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return nil
}

// Exec makes a fresh cgroup pinned to an uplink, moves the caller into
// it, and returns its path; the caller then becomes the command. Root
// only.
func (o object) Exec(sender dbus.Sender, uplink string) (string, *dbus.Error) {
	if derr := o.s.requireRoot(sender, "exec"); derr != nil {
		return "", derr
	}
	// The caller (wanpin exec) is moved into the cgroup before it is
	// pinned: its pid, as the bus knows it, not as it says.
	var pid uint32
	if err := o.s.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, string(sender)).Store(&pid); err != nil {
		return "", dbus.NewError(ErrFailed, []any{"cannot tell which process is calling: " + err.Error()})
	}
	cg, err := o.s.b.Exec(uplink, pid)
	if err != nil {
		return "", dbus.NewError(ErrFailed, []any{err.Error()})
	}
	return cg, nil
}

// EventArgs are an Event's arguments, checked.
type EventArgs struct {
	Local, Peer netip.Addr   // up: PPP's addresses
	DNS         []netip.Addr // up: PPP's usepeerdns servers
	Family      inet.Family  // lease, lease-lost: which lease file to read again
}

// EventKinds are the events hooks send: PPP's ip-up and ip-down, and a
// DHCP client's lease and its loss (whose content the daemon reads from
// the lease file the CLI wrote).
var EventKinds = []string{"up", "down", "lease", "lease-lost"}

// maxDNS bounds the resolvers an event may carry.
const maxDNS = 8

// checkEvent validates an Event call's arguments; everything a caller
// sends passes through here before the daemon sees it.
func checkEvent(kind, iface string, args map[string]any) (EventArgs, error) {
	var ea EventArgs
	if !slices.Contains(EventKinds, kind) {
		return ea, fmt.Errorf("kind %q: want one of %v", kind, EventKinds)
	}
	if err := ifname.Check(iface); err != nil {
		return ea, err
	}
	for key, v := range args {
		str, ok := v.(string)
		if !ok {
			return ea, fmt.Errorf("%s: want a string", key)
		}
		switch key {
		case "local", "peer":
			a, err := netip.ParseAddr(str)
			if err != nil {
				return ea, fmt.Errorf("%s: %v", key, err)
			}
			// The peer becomes the uplink's gateway: a multicast,
			// loopback or unspecified one made every routing apply fail
			// ("invalid argument", retried every second, the rest of the
			// state not applied either), and a zone (fe80::1%wan1) made
			// a route the kernel stores without it, so that drift
			// repair put it back twice a second forever. The interface
			// is the event's own.
			if a.Zone() != "" {
				return ea, fmt.Errorf("%s: %q: no zone, the interface is the event's", key, str)
			}
			if a = a.Unmap(); !a.IsGlobalUnicast() && !a.IsLinkLocalUnicast() {
				return ea, fmt.Errorf("%s: %q is not a unicast address", key, str)
			}
			if key == "local" {
				ea.Local = a
			} else {
				ea.Peer = a
			}
		case "dns":
			for _, p := range strings.Split(str, ",") {
				if p == "" {
					continue
				}
				a, err := netip.ParseAddr(p)
				if err != nil || a.Zone() != "" || !a.Unmap().IsGlobalUnicast() {
					return ea, fmt.Errorf("dns: %q is not a unicast address", p)
				}
				if len(ea.DNS) == maxDNS {
					return ea, fmt.Errorf("dns: more than %d servers", maxDNS)
				}
				ea.DNS = append(ea.DNS, a.Unmap())
			}
		case "family":
			switch str {
			case "4":
				ea.Family = inet.IPv4
			case "6":
				ea.Family = inet.IPv6
			default:
				return ea, fmt.Errorf("family %q: want 4 or 6", str)
			}
		default:
			return ea, fmt.Errorf("unknown argument %q", key)
		}
	}
	if (kind == "lease" || kind == "lease-lost") && ea.Family == 0 {
		return ea, fmt.Errorf("%s needs a family", kind)
	}
	return ea, nil
}

// requireRoot asks the bus for the caller's uid.
func (s *Server) requireRoot(sender dbus.Sender, what string) *dbus.Error {
	var uid uint32
	err := s.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid)
	if err != nil {
		return dbus.NewError(ErrFailed, []any{"cannot tell who is calling: " + err.Error()})
	}
	if uid != 0 {
		s.log.Warn("refused a control call", "method", what, "uid", uid)
		return dbus.NewError(ErrPermissionDenied, []any{what + " requires root"})
	}
	return nil
}

// ErrNotRunning: no wanpin owns its name on the bus.
var ErrNotRunning = errors.New("wanpin is not running (no owner of " + Name + " on the system bus)")
