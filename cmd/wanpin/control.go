package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/wanpin/wanpin/pkg/bus"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/daemon"
	"github.com/wanpin/wanpin/pkg/policy"
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

func (b backend) Exec(uplink, cgroup string) error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Exec(ctx, uplink, cgroup)
}

func (b backend) Event(kind, iface string, local, peer netip.Addr) error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.d.Event(ctx, kind, iface, local, peer)
}

// serveBus exports the control interface. Without a system bus the
// daemon still routes; only the control commands are unavailable.
func serveBus(d *daemon.Daemon, log *slog.Logger) func() {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		log.Error("control interface unavailable: cannot reach the system bus", "err", err)
		return func() {}
	}
	srv, err := bus.Serve(conn, backend{d}, log)
	if err != nil {
		log.Error("control interface unavailable", "err", err)
		conn.Close()
		return func() {}
	}
	log.Info("control interface on the system bus", "name", bus.Name)
	return func() { srv.Close(); conn.Close() }
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

func cmdReload(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: wanpin reload")
		return 2
	}
	c, ok := dial(stderr, "reload")
	if !ok {
		return 1
	}
	defer c.Close()
	if err := c.Reload(context.Background()); err != nil {
		fmt.Fprintf(stderr, "wanpin reload: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "reloaded")
	return 0
}

// cmdEvent is what the PPP hooks call: wanpin event up|down IFACE
// [--local ADDR] [--peer ADDR].
func cmdEvent(args []string, stderr io.Writer) int {
	const usage = "usage: wanpin event up|down IFACE [--local ADDR] [--peer ADDR]"
	if len(args) < 2 || (args[0] != "up" && args[0] != "down") {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	kind, iface := args[0], args[1]
	fs := flag.NewFlagSet("wanpin event", flag.ContinueOnError)
	fs.SetOutput(stderr)
	local := fs.String("local", "", "the local address (PPP_LOCAL)")
	peer := fs.String("peer", "", "the peer address (PPP_REMOTE)")
	if fs.Parse(args[2:]) != nil || fs.NArg() > 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var addrs [2]netip.Addr
	for i, s := range []string{*local, *peer} {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintf(stderr, "wanpin event: %v\n", err)
			return 2
		}
		addrs[i] = a
	}
	c, ok := dial(stderr, "event")
	if !ok {
		return 1
	}
	defer c.Close()
	if err := c.Event(context.Background(), kind, iface, addrs[0], addrs[1]); err != nil {
		fmt.Fprintf(stderr, "wanpin event: %v\n", err)
		return 1
	}
	return 0
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
