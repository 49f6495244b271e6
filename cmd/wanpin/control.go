package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/wanpin/wanpin/pkg/bus"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/daemon"
	"github.com/wanpin/wanpin/pkg/ifname"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/lease"
	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
)

// backend adapts the daemon to the bus: every call is bounded in time.
type backend struct{ d *daemon.Daemon }

func (b backend) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), bus.Timeout)
}

func (b backend) Status() (core.Status, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Status(ctx)
}

func (b backend) Explain(f policy.Flow) (core.Explanation, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Explain(ctx, f)
}

func (b backend) Reload() error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Reload(ctx)
}

func (b backend) SetService(uplink string, inService bool) error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.SetService(ctx, uplink, inService)
}

func (b backend) Quota(uplink string, reset bool, limit uint64) error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Quota(ctx, uplink, reset, limit)
}

func (b backend) Exec(uplink string, pid uint32) (string, error) {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Exec(ctx, uplink, pid)
}

func (b backend) Event(kind, iface string, ea bus.EventArgs) error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Event(ctx, kind, iface, ea)
}

// serveBus exports the control interface, and keeps it exported: the
// system bus may not be up yet when the daemon starts (the unit is only
// ordered after dbus.service) and may restart while it runs, which closes
// the connection (seen on the booted lab router: after dbus came back,
// `wanpin status` said wanpin was not running until the daemon was
// restarted). Without a bus the daemon still routes; only the control
// commands are unavailable, and `systemctl reload` falls back to SIGHUP.
func serveBus(d *daemon.Daemon, log *slog.Logger) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait := busRetryMin
		logged := false
		for {
			conn, srv, err := exportOnBus(d, log)
			if err != nil {
				if !logged {
					log.Error("control interface unavailable, retrying", "err", err)
					logged = true
				}
				select {
				case <-stop:
					return
				case <-time.After(wait):
				}
				wait = min(2*wait, busRetryMax)
				continue
			}
			log.Info("control interface on the system bus", "name", bus.Name)
			logged, wait = false, busRetryMin
			select {
			case <-stop:
				srv.Close()
				conn.Close()
				return
			case <-conn.Context().Done():
				log.Warn("lost the system bus, reconnecting")
				conn.Close()
			}
		}
	}()
	return func() { close(stop); <-done }
}

// How soon serveBus tries the bus again, doubling up to the maximum.
const (
	busRetryMin = 500 * time.Millisecond
	busRetryMax = 10 * time.Second
)

func exportOnBus(d *daemon.Daemon, log *slog.Logger) (*dbus.Conn, *bus.Server, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, nil, fmt.Errorf("cannot reach the system bus: %w", err)
	}
	srv, err := bus.Serve(conn, backend{d}, log)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, srv, nil
}

func dial(stderr io.Writer, what string) (*bus.Client, bool) {
	c, err := bus.Dial()
	if err != nil {
		fmt.Fprintf(stderr, "wanpin %s: %v\n", what, err)
		return nil, false
	}
	return c, true
}

// dialQuiet connects without printing anything.
func dialQuiet() (*bus.Client, error) { return bus.Dial() }

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanpin status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if fs.Parse(args) != nil {
		return 2
	}
	c, ok := dial(stderr, "status")
	if !ok {
		return 1
	}
	defer c.Close()
	s, err := c.Status(context.Background())
	if err != nil {
		fmt.Fprintf(stderr, "wanpin status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(s)
		return 0
	}
	fmt.Fprint(stdout, bus.FormatStatus(s, time.Now()))
	return 0
}

// cmdReload asks the daemon to reload its file over the bus and waits
// for the answer: a refused file's error (file:line) is printed and the
// exit status is 1. With --pid (the unit's ExecReload passes $MAINPID)
// a daemon the bus cannot reach (no dbus-daemon) is sent SIGHUP instead,
// which reloads the same way but answers only in the log. The unit used
// to run /bin/kill, which comes from procps: a minimal Debian has none
// (status 203/EXEC on the booted lab router).
func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanpin reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pid := fs.Int("pid", 0, "the daemon's process, sent SIGHUP when the bus cannot be reached")
	if fs.Parse(args) != nil || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: wanpin reload [--pid PID]")
		return 2
	}
	c, busErr := dialQuiet()
	if busErr == nil && *pid > 1 {
		// A bus without the daemon's name (it is reconnecting after a
		// bus restart) is no way to reach it either.
		if _, err := c.Status(context.Background()); errors.Is(err, bus.ErrNotRunning) {
			c.Close()
			busErr = err
		}
	}
	if busErr != nil {
		if *pid <= 1 {
			fmt.Fprintf(stderr, "wanpin reload: %v\n", busErr)
			return 1
		}
		if err := syscall.Kill(*pid, syscall.SIGHUP); err != nil {
			fmt.Fprintf(stderr, "wanpin reload: no bus (%v), and SIGHUP to %d: %v\n", busErr, *pid, err)
			return 1
		}
		fmt.Fprintf(stdout, "no bus (%v): sent SIGHUP to %d; the result is in the daemon's log\n", busErr, *pid)
		return 0
	}
	defer c.Close()
	if err := c.Reload(context.Background()); err != nil {
		fmt.Fprintf(stderr, "wanpin reload: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "reloaded")
	return 0
}

// cmdEvent is what the PPP and DHCP client hooks call:
//
//	wanpin event up|down IFACE [--local ADDR] [--peer ADDR] [--dns ADDR,...]
//	wanpin event lease IFACE --family 4|6 [--address A/LEN] [--gateway G,...] [--dns D,...] [--client NAME]
//	wanpin event lease-lost IFACE --family 4|6 [--client NAME]
//
// A lease is written to the runtime directory first (so that a daemon
// that starts later finds it), then the daemon is told, if it runs.
func cmdEvent(args []string, stderr io.Writer) int {
	const usage = `usage: wanpin event up|down IFACE [--local ADDR] [--peer ADDR] [--dns ADDR,...]
       wanpin event lease IFACE --family 4|6 [--address ADDR[/LEN|/MASK]] [--gateway ADDR,...] [--dns ADDR,...] [--client NAME]
       wanpin event lease-lost IFACE --family 4|6 [--client NAME]`
	if len(args) < 2 || !slices.Contains(bus.EventKinds, args[0]) {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	kind, iface := args[0], args[1]
	fs := flag.NewFlagSet("wanpin event", flag.ContinueOnError)
	fs.SetOutput(stderr)
	local := fs.String("local", "", "up: the local address (PPP_LOCAL)")
	peer := fs.String("peer", "", "up: the peer address (PPP_REMOTE)")
	dns := fs.String("dns", "", "up, lease: DNS servers, comma-separated")
	family := fs.String("family", "", "lease, lease-lost: 4 or 6")
	address := fs.String("address", "", "lease: the leased address, with its prefix length or mask (bare: a host prefix)")
	gateway := fs.String("gateway", "", "lease: routers, comma-separated")
	client := fs.String("client", "", "lease: the DHCP client (dhclient, dhcpcd, NetworkManager)")
	runtime := fs.String("runtime-dir", envOr("WANPIN_RUNTIME_DIR", "/run/wanpin"), "where lease files go")
	if fs.Parse(args[2:]) != nil || fs.NArg() > 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "wanpin event: %v\n", err)
		return 2
	}
	if err := ifname.Check(iface); err != nil {
		return fail(err)
	}
	var ea bus.EventArgs
	switch kind {
	case "up", "down":
		for _, x := range []struct {
			s  string
			to *netip.Addr
		}{{*local, &ea.Local}, {*peer, &ea.Peer}} {
			if x.s == "" {
				continue
			}
			a, err := netip.ParseAddr(strings.TrimSpace(x.s))
			if err != nil {
				return fail(err)
			}
			*x.to = a
		}
		var err error
		if ea.DNS, err = addrList(*dns); err != nil {
			return fail(fmt.Errorf("--dns: %w", err))
		}
	default:
		switch *family {
		case "4":
			ea.Family = inet.IPv4
		case "6":
			ea.Family = inet.IPv6
		default:
			return fail(fmt.Errorf("--family: want 4 or 6"))
		}
		k := core.LeaseKey{Interface: iface, Family: ea.Family}
		var l *core.Lease
		if kind == "lease" {
			// The values go into the lease file's key=value lines: a line
			// break in one (--gateway "G\naddress=A") would add a line of
			// the caller's own, overriding the address the DHCP client
			// gave, so none may hold one.
			for _, v := range []struct{ flag, val string }{
				{"--address", *address}, {"--gateway", *gateway}, {"--dns", *dns}, {"--client", *client},
			} {
				if strings.ContainsAny(v.val, "\r\n") {
					return fail(fmt.Errorf("lease of %s: %s %q: a line break is not allowed", iface, v.flag, v.val))
				}
			}
			addr, err := leaseAddress(*address, ea.Family)
			if err != nil {
				return fail(fmt.Errorf("lease of %s: --address: %w", iface, err))
			}
			// One unusable resolver (0.0.0.0, loopback, link-local) in
			// what the server sent would refuse the whole lease, gateway
			// and all: it is left out, and the others kept.
			servers, dropped := lease.UsableDNS(*dns, ea.Family)
			if len(dropped) > 0 {
				fmt.Fprintf(stderr, "wanpin event: lease of %s: ignoring DNS servers %s: not unicast %v addresses\n", iface, strings.Join(dropped, ","), ea.Family)
			}
			dnsList := strings.Join(servers, ",")
			text := fmt.Sprintf("client=%s\naddress=%s\ngateways=%s\ndns=%s\n", *client, addr, *gateway, dnsList)
			if *address == "" {
				text = fmt.Sprintf("client=%s\ngateways=%s\ndns=%s\n", *client, *gateway, dnsList)
			}
			parsed, err := lease.Parse([]byte(text), ea.Family)
			if err != nil {
				return fail(fmt.Errorf("lease of %s: %w", iface, err))
			}
			l = &parsed
		} else if *client != "" {
			// Two clients on one interface (ifupdown's dhclient and the
			// dhcpcd service, which runs on every interface): the file
			// holds the lease last reported, and one client's loss must
			// not take another's lease away, or the uplink loses the
			// gateway that only that lease knows. A loss removes the
			// lease of its own client (or of none named) alone.
			if old, err := lease.Read(*runtime, k); err == nil && old != nil && old.Client != "" && !strings.EqualFold(old.Client, *client) {
				fmt.Fprintf(stderr, "wanpin event: the lease of %s is %s's, not %s's: kept\n", iface, old.Client, *client)
				return 0
			}
		}
		if err := lease.Write(*runtime, k, l); err != nil {
			fmt.Fprintf(stderr, "wanpin event: writing the lease of %s: %v\n", iface, err)
			return 1
		}
	}
	// A daemon that is not running is no failure: the lease is recorded
	// and read when it starts, and it reads the interfaces then anyway.
	// The hooks log only failures, so this must not be one.
	notRunning := func(err error) int {
		what := "it reads the interfaces when it starts"
		if kind == "lease" || kind == "lease-lost" {
			what = "the lease is recorded in " + lease.Dir(*runtime) + " and read when it starts"
		}
		fmt.Fprintf(stderr, "wanpin event: the daemon is not running (%v): %s\n", err, what)
		return 0
	}
	c, err := bus.Dial()
	if err != nil {
		return notRunning(err)
	}
	defer c.Close()
	if err := c.Event(context.Background(), kind, iface, ea); err != nil {
		if errors.Is(err, bus.ErrNotRunning) {
			return notRunning(err)
		}
		fmt.Fprintf(stderr, "wanpin event: %v\n", err)
		return 1
	}
	return 0
}

// leaseAddress accepts the leased address as the clients give it:
// ADDR/LEN, ADDR/MASK (dotted IPv4 mask) or a bare ADDR (a host
// prefix); "" stays "".
func leaseAddress(s string, f inet.Family) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	addr, rest, hasLen := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return "", err
	}
	switch {
	case !hasLen:
		return netip.PrefixFrom(a, a.BitLen()).String(), nil
	case strings.Contains(rest, "."):
		m, err := netip.ParseAddr(rest)
		if err != nil || !m.Is4() || f != inet.IPv4 {
			return "", fmt.Errorf("%q: not a prefix length or an IPv4 mask", s)
		}
		ones, bits := net.IPMask(m.AsSlice()).Size()
		if bits == 0 {
			return "", fmt.Errorf("%q: %s is not a contiguous mask", s, rest)
		}
		return netip.PrefixFrom(a, ones).String(), nil
	}
	return s, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// addrList reads "a,b" (spaces allowed).
func addrList(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// cmdService is `wanpin up NAME` / `wanpin down NAME`: maintenance.
func cmdService(what string, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(stderr, "usage: wanpin %s UPLINK\n", what)
		return 2
	}
	c, ok := dial(stderr, what)
	if !ok {
		return 1
	}
	defer c.Close()
	if err := c.SetService(context.Background(), args[0], what == "up"); err != nil {
		fmt.Fprintf(stderr, "wanpin %s: %v\n", what, err)
		return 1
	}
	return 0
}

// cmdQuota is `wanpin quota reset UPLINK` and `wanpin quota set UPLINK
// SIZE`: the count from zero, or another limit until the daemon's next
// reload, restart or period.
func cmdQuota(args []string, stdout, stderr io.Writer) int {
	const usage = `usage: wanpin quota reset UPLINK
       wanpin quota set UPLINK SIZE     (e.g. 30GB; until the next reload, restart or period)`
	if len(args) < 2 || args[0] == "reset" && len(args) != 2 || args[0] == "set" && len(args) != 3 || args[0] != "reset" && args[0] != "set" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var limit uint64
	if args[0] == "set" {
		var err error
		if limit, err = quota.ParseSize(args[2]); err != nil {
			fmt.Fprintf(stderr, "wanpin quota set: %v\n", err)
			return 2
		}
	}
	c, ok := dial(stderr, "quota")
	if !ok {
		return 1
	}
	defer c.Close()
	var err error
	if args[0] == "reset" {
		err = c.ResetQuota(context.Background(), args[1])
	} else {
		err = c.SetQuota(context.Background(), args[1], limit)
	}
	if err != nil {
		fmt.Fprintf(stderr, "wanpin quota %s: %v\n", args[0], err)
		return 1
	}
	if args[0] == "reset" {
		fmt.Fprintf(stdout, "quota of %s reset\n", args[1])
	} else {
		fmt.Fprintf(stdout, "quota of %s set to %s until the next reload, restart or period\n", args[1], quota.FormatSize(limit))
	}
	return 0
}
