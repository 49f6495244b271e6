package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/daemon"
	"github.com/wanpin/wanpin/pkg/flush"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/lease"
	"github.com/wanpin/wanpin/pkg/metrics"
	"github.com/wanpin/wanpin/pkg/neighbours"
	"github.com/wanpin/wanpin/pkg/neighbours/observe"
	"github.com/wanpin/wanpin/pkg/quota"
	"github.com/wanpin/wanpin/pkg/rules"
	"github.com/wanpin/wanpin/pkg/tables"
	"github.com/wanpin/wanpin/pkg/watch"
)

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("wanpin "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", DefaultConfig, "policy file")
	return fs, cfg
}

func cmdRun(args []string, stderr io.Writer) int {
	fs, cfgPath := newFlags("run", stderr)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	hooksDir := fs.String("hooks-dir", "/etc/wanpin/hooks.d", "executables run on every uplink transition")
	noOwner := fs.Bool("no-table-owner", false, "do not claim the nftables table: other tools may delete it (it is then repaired)")
	metricsAddr := fs.String("metrics-listen", "", "serve Prometheus metrics on this numeric address, e.g. 127.0.0.1:9469 (off when empty)")
	metricsPublic := fs.Bool("metrics-public", false, "let --metrics-listen be an address other machines can reach (one not loopback, or every address)")
	runtimeDir := fs.String("runtime-dir", envOr("WANPIN_RUNTIME_DIR", "/run/wanpin"), "where the DHCP hooks' lease files are")
	stateDir := fs.String("state-dir", quota.DefaultDir, "where the data quotas' counts are kept across restarts and reboots")
	if fs.Parse(args) != nil {
		return 2
	}
	var lv slog.LevelVar
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "wanpin run: --log-level: %v\n", err)
		return 2
	}
	// A refused metrics address is a start error, like a bad config; it
	// is bound once the daemon holds the namespace (a second daemon is
	// told which process runs, not that the port is taken), before Run
	// changes anything.
	var metricsAt metrics.Addr
	if *metricsAddr != "" {
		var err error
		if metricsAt, err = metrics.CheckAddr(*metricsAddr, *metricsPublic); err != nil {
			fmt.Fprintf(stderr, "wanpin run: --metrics-listen %v\n", err)
			return 2
		}
	} else if *metricsPublic {
		fmt.Fprintln(stderr, "wanpin run: --metrics-public needs --metrics-listen")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &lv, ReplaceAttr: microseconds}))
	// SIGTERM is caught from here on: one that comes while a large
	// config is loaded stops the daemon before it applies anything,
	// instead of killing it by the default action.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d, err := daemon.New(daemon.Options{ConfigPath: *cfgPath, Log: log,
		NewFlusher: func() (daemon.Flusher, error) { return flush.New(-1) }, HooksDir: *hooksDir, NoTableOwner: *noOwner, RuntimeDir: *runtimeDir,
		StateDir: *stateDir})
	if err != nil {
		fmt.Fprintf(stderr, "wanpin run: %v\n", err)
		return 1
	}
	if ctx.Err() != nil {
		log.Info("stopped before starting", "reason", "SIGTERM while loading")
		return 0
	}
	var metricsLn net.Listener
	if *metricsAddr != "" {
		if metricsLn, err = metrics.Listen(metricsAt); err != nil {
			fmt.Fprintf(stderr, "wanpin run: %v\n", err)
			return 1
		}
		defer metricsLn.Close()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	stopBus := serveBus(d, log)
	defer stopBus()
	if metricsLn != nil {
		go func() {
			src := func() (core.Status, error) { return d.Status(ctx) }
			if err := metrics.Serve(ctx, metricsLn, src, metrics.DefaultLimits, log); err != nil {
				log.Error("metrics unavailable", "err", err)
			}
		}()
	}
	if err := d.Run(ctx, reload); err != nil {
		log.Error("stopping", "err", err)
		return 1
	}
	return 0
}

// microseconds stamps log lines to the microsecond: reactions to a link
// event take well under a millisecond, and the log is how they are timed.
func microseconds(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.String(slog.TimeKey, a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}

// loadConfig reads and checks the policy file, printing its error
// (file:line and key) to stderr.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return nil, false
	}
	return cfg, true
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("check", stderr)
	offline := fs.Bool("offline", false, "check the file only, not this router's other programs' rules")
	if fs.Parse(args) != nil {
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d uplinks, %d policies)\n", *cfgPath, len(cfg.Uplinks), len(cfg.Policies))
	if *offline {
		return 0
	}
	warnGatewayless(cfg, stdout)
	return checkRouter(cfg, stdout, stderr)
}

// warnGatewayless names the uplinks whose interface has addresses but no
// gateway: most often the LAN's interface typed by mistake. The daemon
// neither pins nor guards such an interface, and balances nothing onto
// it, so the LAN keeps working; the warning says why the uplink stays
// down.
func warnGatewayless(cfg *config.Config, stdout io.Writer) {
	st := map[string]core.UplinkState{}
	if observeAll(cfg, st) != nil {
		return // checkRouter says what it could not read
	}
	for _, u := range cfg.Uplinks {
		if st[u.Name].Gatewayless() {
			fmt.Fprintf(stdout, "this router: warning: uplink %s: interface %s has addresses but no gateway in either family (is it the LAN's?); it stays down until it has one\n",
				u.Name, u.Interface)
		}
	}
}

// checkRouter judges this router's other programs' rules against cfg as
// the daemon does at start: a clash that would break traffic fails the
// check. Without root the nftables rules cannot be read, and it says so.
func checkRouter(cfg *config.Config, stdout, stderr io.Writer) int {
	snap, err := observe.Read(netns.None(), rules.DefaultTable, rules.KeepTable(rules.DefaultTable))
	if err != nil {
		fmt.Fprintf(stderr, "this router: not checked: %v\n", err)
		return 0
	}
	rep := neighbours.Analyze(snap, neighbours.Mine{Mask: cfg.MarkMask, Priority: cfg.RulePriority,
		Block: config.RuleBlock, Uplinks: len(cfg.Uplinks), Allow: cfg.AllowConflicts})
	for _, u := range rep.Unread {
		fmt.Fprintf(stderr, "this router: not checked: %s\n", u)
	}
	if msg := rep.Error(); msg != "" {
		fmt.Fprintf(stderr, "this router: %s\n", msg)
	}
	for _, f := range rep.Findings {
		if f.Severity == neighbours.Breaking && !f.Allowed {
			continue // in the message above
		}
		fmt.Fprintf(stdout, "this router: %s: %s\n", f.Level, f)
	}
	if len(rep.Breaking()) > 0 {
		return 1
	}
	if len(rep.Findings) == 0 {
		fmt.Fprintf(stdout, "this router: no other program's rule clashes with mark_mask %#08x and rules %d-%d (%d ip rules, %d mark rules of other programs read)\n",
			cfg.MarkMask, cfg.RulePriority, cfg.RulePriority+config.RuleBlock-1, len(snap.Rules), len(snap.Marks))
	}
	return 0
}

func cmdPlan(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("plan", stderr)
	allUp := fs.Bool("all-up", false, "assume every uplink is up (do not read the interfaces)")
	if fs.Parse(args) != nil {
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	in := core.Facts{Config: cfg, Uplinks: map[string]core.UplinkState{}}
	if *allUp {
		for _, u := range cfg.Uplinks {
			in.Uplinks[u.Name] = core.AssumeUp(u)
		}
	} else if err := observeAll(cfg, in.Uplinks); err != nil {
		fmt.Fprintf(stderr, "wanpin plan: %v (use --all-up to plan without reading the interfaces)\n", err)
		return 1
	}
	// The tables the daemon would choose: other programs' tables (their
	// routes and the tables their rules look up) and the names in
	// rt_tables are skipped (read without privilege). --all-up
	// reads nothing of the machine: the plan of the file alone.
	var use core.TableUse
	if !*allUp {
		use.Named = daemon.NamedTables(daemon.DefaultRTTables)
		if tm, err := tables.New(netns.None()); err == nil {
			if f, err := tm.ForeignTables(); err == nil {
				use.Foreign, use.Rules = f.Routes, f.Rules
			}
			tm.Close()
		}
	}
	t, notes, err := core.AssignTables(cfg, use, core.Tables{})
	if err != nil {
		fmt.Fprintf(stderr, "wanpin plan: %v\n", err)
		return 1
	}
	in.Tables = t
	d := core.Build(in)
	for _, n := range notes.Chosen {
		fmt.Fprintln(stdout, "# "+n)
	}
	for _, n := range notes.Warnings {
		fmt.Fprintln(stdout, "# warning: "+n)
	}
	fmt.Fprintln(stdout, "# nft list table inet "+d.NFT.Table)
	fmt.Fprint(stdout, rules.Render(d.NFT))
	fmt.Fprint(stdout, d.Routing.Render())
	return 0
}

// observeAll reads the uplinks' interfaces; reading needs no privilege.
// Services are not resolved (a plan is made without the daemon): service
// policies are shown as matching nothing, and health verdicts are not
// known (every uplink that is up counts as healthy).
func observeAll(cfg *config.Config, out map[string]core.UplinkState) error {
	obs, err := watch.NewObserver(netns.None())
	if err != nil {
		return err
	}
	defer obs.Close()
	names := make([]string, len(cfg.Uplinks))
	for i, u := range cfg.Uplinks {
		names[i] = u.Interface
	}
	links, err := obs.Snapshot(names)
	if err != nil {
		return err
	}
	for _, u := range cfg.Uplinks {
		leases, _ := lease.ReadAll(envOr("WANPIN_RUNTIME_DIR", "/run/wanpin"), []string{u.Interface})
		byFam := map[inet.Family]core.Lease{}
		for k, l := range leases {
			byFam[k.Family] = l
		}
		out[u.Name], _ = core.Observe(u, links[u.Interface], core.Hint{}, byFam)
	}
	return nil
}
