// Command bench measures wanpin in the lab and prints one table of
// figures, each ratio measured side by side in one run (configurations
// interleaved, medians compared), because the machines are shared and
// noisy. Run as root: go run ./internal/bench [-wanpin PATH] [-reps N];
// go run ./internal/bench -only datapath [-cycles N] [-window D] for the
// per-packet and per-connection figures (datapath.go); -only accounting
// for the cost of each lookup of a forwarded packet (accounting.go);
// -only adaptive [-cycles N] for downloads with adaptive weights
// (adaptive.go).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

var verbose *bool

func main() {
	bin := flag.String("wanpin", "", "wanpin binary (built from ./cmd/wanpin when empty)")
	reps := flag.Int("reps", 5, "iperf3 runs per configuration")
	secs := flag.Int("seconds", 3, "length of one iperf3 run")
	verbose = flag.Bool("v", false, "print details (the daemon's memory by kind)")
	only := flag.String("only", "", `run one part alone: "throughput" (the forwarding ratios), "resources" (memory and idle CPU), "apply" (the Go benchmarks of applies and flushes), "datapath" (64-byte packets, new flows and connections per second; see -cycles and -window), "accounting" (the cost of each lookup of a forwarded packet; -cycles rounds of -window per variant) or "adaptive" (downloads with weight = "auto" against equal weights, ISPs shaped to 80 and 20 Mbit/s; -cycles)`)
	cycles := flag.Int("cycles", 10, "datapath: cycles, each measuring every configuration once")
	window := flag.Duration("window", 2*time.Second, "datapath: how long each figure is counted, per configuration and cycle")
	flag.Parse()
	var err error
	switch *only {
	case "":
		err = run(*bin, *reps, *secs, false)
	case "throughput":
		err = run(*bin, *reps, *secs, true)
	case "resources":
		err = runResources(*bin)
	case "apply":
		fmt.Printf("%-44s %14s %10s %s\n", "figure", "value", "target", "")
		err = runApply()
	case "datapath":
		err = runDatapath(*bin, *cycles, *window)
	case "accounting":
		err = runAccounting(*bin, *cycles, *window)
	case "adaptive":
		err = runAdaptive(*bin, *cycles)
	default:
		err = fmt.Errorf("-only %q: want \"throughput\", \"resources\", \"apply\", \"datapath\", \"accounting\" or \"adaptive\"", *only)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is one way of setting up the router for a throughput run.
type config struct {
	name  string
	setup func(l *netlab.Lab, dir string) (stop func(), err error)
}

// prepare makes the scratch directory and builds wanpin into it unless
// a binary was given.
func prepare(bin string) (dir, wanpin string, err error) {
	dir, err = os.MkdirTemp("", "wanpin-bench-")
	if err != nil {
		return "", "", err
	}
	if bin == "" {
		bin = filepath.Join(dir, "wanpin")
		// Built as packaging/deb/build.sh builds it: the memory figure
		// is the shipped binary's (an unstripped build shows some 2 MB
		// more resident file pages).
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/wanpin")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", "", fmt.Errorf("building wanpin: %v: %s", err, out)
		}
	}
	return dir, bin, nil
}

func runResources(bin string) error {
	dir, bin, err := prepare(bin)
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	netlab.Sweep()
	rss, cpu, err := resources(bin, dir)
	if err != nil {
		return err
	}
	fmt.Printf("daemon resident memory, 4 dual-stack uplinks x 4 targets: %.1f MB (target < 20 MB)\n", rss/1e6)
	fmt.Printf("daemon idle CPU, same: %.2f%% of a core (target < 1%%)\n", cpu*100)
	return nil
}

// benchLab prepares the binary (prepare) and builds a lab of isps ISPs
// after sweeping dead ones; done removes both.
func benchLab(bin string, isps int) (dir, wanpin string, l *netlab.Lab, done func(), err error) {
	dir, wanpin, err = prepare(bin)
	if err != nil {
		return "", "", nil, nil, err
	}
	netlab.Sweep()
	if l, err = netlab.New(netlab.Options{ISPs: isps}); err != nil {
		os.RemoveAll(dir)
		return "", "", nil, nil, fmt.Errorf("a lab of %d ISPs: %w", isps, err)
	}
	return dir, wanpin, l, func() { l.Close(); os.RemoveAll(dir) }, nil
}

func run(bin string, reps, secs int, throughputOnly bool) error {
	dir, bin, l, done, err := benchLab(bin, 2)
	if err != nil {
		return err
	}
	defer done()

	wanpin := func(cfg string) func(l *netlab.Lab, dir string) (func(), error) {
		return func(l *netlab.Lab, dir string) (func(), error) { return startWanpin(l, bin, dir, cfg) }
	}
	configs := []config{
		{"no rules (one masquerade)", func(l *netlab.Lab, dir string) (func(), error) {
			_, err := l.Exec(l.Router, "nft", `add table ip bare; add chain ip bare nat { type nat hook postrouting priority srcnat; }; add rule ip bare nat oifname "wan1" masquerade`)
			return func() { l.Exec(l.Router, "nft", "delete", "table", "ip", "bare") }, err
		}},
		{"wanpin, 1 policy entry", wanpin(oneUplinkConfig(1))},
		{"wanpin, 10,000 policy entries", wanpin(oneUplinkConfig(10000))},
		{"classic hand-written CONNMARK rules", classic},
	}
	results := make([][]float64, len(configs))
	for r := 0; r < reps; r++ {
		for i, c := range configs {
			stop, err := c.setup(l, dir)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			bps, err := iperf(l, secs)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			results[i] = append(results[i], bps)
		}
	}
	med := make([]float64, len(configs))
	for i := range configs {
		med[i] = median(results[i])
	}
	fmt.Printf("%-44s %14s %10s %s\n", "figure", "value", "target", "")
	row := func(name, value, target string, ok bool) {
		verdict := "ok"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Printf("%-44s %14s %10s %s\n", name, value, target, verdict)
	}
	for i, c := range configs {
		lo, hi := minMax(results[i])
		fmt.Printf("%-44s %11.2f Gb/s %10s (min..max %.2f..%.2f; median of %d: %s)\n", "throughput: "+c.name, med[i]/1e9, "", lo/1e9, hi/1e9, reps, gbps(results[i]))
	}
	r1 := med[1] / med[0]
	row("ratio: wanpin / no rules", fmt.Sprintf("%.3f", r1), ">= 0.95", r1 >= 0.95)
	r2 := med[2] / med[1]
	row("ratio: 10,000 entries / 1 entry", fmt.Sprintf("%.3f", r2), ">= 0.95", r2 >= 0.95)
	r3 := med[1] / med[3]
	row("ratio: wanpin / classic CONNMARK rules", fmt.Sprintf("%.3f", r3), ">= 0.95", r3 >= 0.95)
	if throughputOnly {
		return nil
	}

	sw, err := switchTimes(l, bin, dir, 20)
	if err != nil {
		return fmt.Errorf("switch time: %w", err)
	}
	p50, p95 := percentile(sw, 0.5), percentile(sw, 0.95)
	row("carrier loss -> switch, median (20 trials)", p50.Round(time.Microsecond*100).String(), "< 100ms", p50 < 100*time.Millisecond)
	row("carrier loss -> switch, 95th percentile", p95.Round(time.Microsecond*100).String(), "< 100ms", p95 < 100*time.Millisecond)

	bh, pps, err := blackholeTimes(l, bin, dir, 20)
	if err != nil {
		return fmt.Errorf("blackhole detection: %w", err)
	}
	b50, b95 := percentile(bh, 0.5), percentile(bh, 0.95)
	row("blackhole -> uplink down, median (20 trials)", b50.Round(time.Millisecond).String(), "", true)
	row("blackhole -> uplink down, 95th percentile", b95.Round(time.Millisecond).String(), "<= 1.5s", b95 <= 1500*time.Millisecond)
	row("probe packets per second, one uplink", fmt.Sprintf("%.1f", pps), "<= 10", pps <= 10)

	udp, err := udpResume(l, bin, dir, 10)
	if err != nil {
		return fmt.Errorf("udp resume: %w", err)
	}
	row("UDP flow resumes on the other uplink, median of 10", percentile(udp, 0.5).Round(time.Millisecond).String(), "", true)

	lost, sent, err := reloadUnderTraffic(l, bin, dir)
	if err != nil {
		return fmt.Errorf("reload under traffic: %w", err)
	}
	row(fmt.Sprintf("datagrams lost over 10 reloads (of %d)", sent), fmt.Sprint(lost), "0", lost == 0)

	rss, cpu, err := resources(bin, dir)
	if err != nil {
		return fmt.Errorf("resources: %w", err)
	}
	row("daemon resident memory, 4 dual-stack uplinks x 4 targets", fmt.Sprintf("%.1f MB", rss/1e6), "< 20 MB", rss < 20e6)
	row("daemon idle CPU, same", fmt.Sprintf("%.2f%% of a core", cpu*100), "< 1%", cpu < 0.01)

	return runApply()
}

// runApply runs the Go benchmarks of applies and flushes.
func runApply() error {
	row := func(name, value, target string, ok bool) {
		verdict := "ok"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Printf("%-44s %14s %10s %s\n", name, value, target, verdict)
	}
	for _, g := range []struct {
		pkg, bench, metric, name, target string
		ok                               func(float64) bool
	}{
		{"./pkg/daemon", "PlanApply", "ms/apply", "plan + apply, 64 uplinks, 10,000 entries (ms)", "< 200", func(v float64) bool { return v < 200 }},
		{"./pkg/daemon", "ManyPolicies/one-key", "ms/apply", "build + apply, 10,000 one-key policies (ms)", "< 1000", func(v float64) bool { return v < 1000 }},
		{"./pkg/daemon", "ManyPolicies/two-keys", "ms/apply", "build + apply, 10,000 two-key policies (ms)", "< 1000", func(v float64) bool { return v < 1000 }},
		{"./pkg/flush", "FlushMark100k", "ms/flush", "conntrack flush, 100,000 entries of one uplink (ms)", "< 1000", func(v float64) bool { return v < 1000 }},
		{"./pkg/flush", "FlushMark100k", "lost-entries", "entries of the other uplink lost in that flush", "0", func(v float64) bool { return v == 0 }},
	} {
		v, err := goBench(g.pkg, g.bench, g.metric)
		if err != nil {
			return err
		}
		row(g.name, fmt.Sprintf("%.1f", v), g.target, g.ok(v))
	}
	return nil
}

// goBench runs one Go benchmark of the repository and returns a metric.
func goBench(pkg, name, metric string) (float64, error) {
	benchtime := "20x"
	switch {
	case strings.Contains(name, "Flush"):
		benchtime = "1x"
	case strings.Contains(name, "ManyPolicies"):
		benchtime = "5x"
	}
	out, err := exec.Command("go", "test", pkg, "-run", "XXX", "-bench", name, "-benchtime", benchtime).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("go test -bench %s: %v\n%s", name, err, out)
	}
	fields := strings.Fields(string(out))
	for i, f := range fields {
		if f == metric && i > 0 {
			var v float64
			fmt.Sscan(fields[i-1], &v)
			return v, nil
		}
	}
	return 0, fmt.Errorf("no %s in:\n%s", metric, out)
}

// udpResume: a UDP flow with a fixed source port runs through uplink 1
// (uplink 2 is a backup); uplink 1 loses carrier; time to the first
// answer through uplink 2.
func udpResume(l *netlab.Lab, bin, dir string, n int) ([]time.Duration, error) {
	stop, err := startWanpin(l, bin, dir, "[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\ntier = 2\n")
	if err != nil {
		return nil, err
	}
	defer stop()
	var out []time.Duration
	for i := 0; i < n; i++ {
		f, err := l.StartUDPFlow(41000+i, netlab.ServerAddr4, 10*time.Millisecond)
		if err != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
		t0 := time.Now()
		if err := l.SetCarrier(1, false); err != nil {
			f.Close()
			return nil, err
		}
		var took time.Duration
		for deadline := t0.Add(5 * time.Second); took == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, a := range f.Answers() {
				if a.At.After(t0) && l.ISPOf(a.Seen) == 2 {
					took = a.At.Sub(t0)
					break
				}
			}
		}
		f.Close()
		l.SetCarrier(1, true)
		if took == 0 {
			return nil, fmt.Errorf("trial %d: the flow never moved", i)
		}
		out = append(out, took)
		time.Sleep(300 * time.Millisecond)
	}
	return out, nil
}

// reloadUnderTraffic sends 100 datagrams a second through the router and
// reloads ten times with changing weights: every datagram must be answered.
func reloadUnderTraffic(l *netlab.Lab, bin, dir string) (lost, sent int64, err error) {
	cfg := func(w int) string {
		return fmt.Sprintf("[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\nweight = %d\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\n", w)
	}
	stop, err := startWanpin(l, bin, dir, cfg(1))
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	f, err := l.StartUDPFlow(42000, netlab.ServerAddr4, 10*time.Millisecond)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(300 * time.Millisecond)
	pid, err := exec.Command("pgrep", "-f", "wanpin run --config "+filepath.Join(dir, "wanpin.toml")).Output()
	if err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("finding the daemon: %w", err)
	}
	for i := 0; i < 10; i++ {
		os.WriteFile(filepath.Join(dir, "wanpin.toml"), []byte(cfg(1+i%3)), 0o644)
		exec.Command("kill", "-HUP", strings.Fields(string(pid))[0]).Run()
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	f.Close()
	s, a := f.Sent(), int64(len(f.Answers()))
	return s - a, s, nil
}

// resources runs wanpin with 4 dual-stack uplinks each probing 4 targets
// (2 per family) in a lab of its own and reads its resident memory and
// CPU use over 20 idle seconds.
func resources(bin, dir string) (rss, cpu float64, err error) {
	l, err := netlab.New(netlab.Options{ISPs: 4})
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	var b strings.Builder
	for i := 1; i <= 4; i++ {
		// Two targets per family: a monitor per family of each uplink.
		fmt.Fprintf(&b, "[[uplink]]\nname = \"isp%d\"\ninterface = \"wan%d\"\n[uplink.health]\ntargets = [\"203.0.113.10\", \"%s\", \"2001:db8:ff::10\", \"%s\"]\n\n",
			i, i, netlab.UplinkGateway4(i), netlab.UplinkGlobal6(i))
	}
	stop, err := startWanpin(l, bin, dir, b.String())
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	out, err := exec.Command("pgrep", "-f", "wanpin run --config "+filepath.Join(dir, "wanpin.toml")).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("finding the daemon: %w", err)
	}
	pid := strings.Fields(string(out))[0]
	time.Sleep(5 * time.Second)
	ticks := func() float64 {
		b, _ := os.ReadFile("/proc/" + pid + "/stat")
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		var u, s float64
		fmt.Sscan(f[11], &u)
		fmt.Sscan(f[12], &s)
		return u + s
	}
	t0, c0 := time.Now(), ticks()
	time.Sleep(20 * time.Second)
	cpu = (ticks() - c0) / 100 / time.Since(t0).Seconds() // USER_HZ is 100 on Linux
	status, _ := os.ReadFile("/proc/" + pid + "/status")
	for _, line := range strings.Split(string(status), "\n") {
		if *verbose && (strings.HasPrefix(line, "Rss") || strings.HasPrefix(line, "VmRSS")) {
			fmt.Fprintln(os.Stderr, "  daemon", strings.Join(strings.Fields(line), " "))
		}
		if strings.HasPrefix(line, "VmRSS:") {
			var kb float64
			fmt.Sscan(strings.Fields(line)[1], &kb)
			rss = kb * 1024
		}
	}
	return rss, cpu, nil
}

// blackholeTimes makes ISP 1 drop everything n times and measures, each
// time, from just before the drop to the daemon's "uplink down" log line
// (default health settings). It also counts uplink 1's probe packets at
// ISP 1 over ten seconds of normal operation.
func blackholeTimes(l *netlab.Lab, bin, dir string, n int) ([]time.Duration, float64, error) {
	stop, err := startWanpin(l, bin, dir, `
[[uplink]]
name = "isp1"
interface = "wan1"
[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]

[[uplink]]
name = "isp2"
interface = "wan2"
[uplink.health]
targets = ["203.0.113.10", "203.0.113.11"]
`)
	if err != nil {
		return nil, 0, err
	}
	defer stop()
	isp := l.ISP(1)
	if _, err := l.Exec(isp, "nft", "add chain inet isp probes { type filter hook prerouting priority -310; }; add rule inet isp probes iifname \"cust\" icmp type echo-request counter"); err != nil {
		return nil, 0, err
	}
	readProbes := func() float64 {
		out, _ := l.Exec(isp, "nft", "list", "chain", "inet", "isp", "probes")
		var n float64
		if i := strings.Index(out, "packets "); i >= 0 {
			fmt.Sscan(out[i+len("packets "):], &n)
		}
		return n
	}
	p0 := readProbes()
	time.Sleep(10 * time.Second)
	pps := (readProbes() - p0) / 10

	logPath := filepath.Join(dir, "wanpin.log")
	var out []time.Duration
	for i := 0; i < n; i++ {
		downs := countLog(logPath, "uplink down")
		t0 := time.Now()
		if err := l.Blackhole(1, true); err != nil {
			return nil, 0, err
		}
		if err := waitCount(logPath, "uplink down", downs+1, 5*time.Second); err != nil {
			return nil, 0, err
		}
		at, err := firstAfter(logPath, "uplink down", t0)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, at.Sub(t0))
		ups := countLog(logPath, "uplink up")
		if err := l.Blackhole(1, false); err != nil {
			return nil, 0, err
		}
		if err := waitCount(logPath, "uplink up", ups+1, 10*time.Second); err != nil {
			return nil, 0, err
		}
		// A random phase against the probe rounds for the next trial.
		time.Sleep(time.Duration(100+37*i%400) * time.Millisecond)
	}
	return out, pps, nil
}

// switchTimes takes uplink 1's carrier away n times and measures, each
// time, from just before the link change to the moment wanpin's
// nftables transaction (uplink 1 out of the balancing) is committed, as
// the daemon's log timestamps it. Both clocks are this machine's.
func switchTimes(l *netlab.Lab, bin, dir string, n int) ([]time.Duration, error) {
	stop, err := startWanpin(l, bin, dir, "[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\n\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\n")
	if err != nil {
		return nil, err
	}
	defer stop()
	logPath := filepath.Join(dir, "wanpin.log")
	var out []time.Duration
	for i := 0; i < n; i++ {
		before := countLog(logPath, "uplink down")
		t0 := time.Now()
		if err := l.SetCarrier(1, false); err != nil {
			return nil, err
		}
		if err := waitCount(logPath, "uplink down", before+1, 5*time.Second); err != nil {
			return nil, err
		}
		var applied time.Time
		for wait := time.Now(); ; time.Sleep(2 * time.Millisecond) {
			if applied, err = firstAfter(logPath, "nftables applied", t0); err == nil {
				break
			}
			if time.Since(wait) > 5*time.Second {
				return nil, err
			}
		}
		out = append(out, applied.Sub(t0))
		up := countLog(logPath, "uplink up")
		if err := l.SetCarrier(1, true); err != nil {
			return nil, err
		}
		if err := waitCount(logPath, "uplink up", up+1, 5*time.Second); err != nil {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out, nil
}

func countLog(path, s string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), s)
}

func waitCount(path, s string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if countLog(path, s) >= n {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("waiting for %d× %q in %s", n, s, path)
}

// firstAfter finds the first log line containing s stamped after t.
func firstAfter(path, s string, t time.Time) (time.Time, error) {
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, s) || !strings.HasPrefix(line, "time=") {
			continue
		}
		stamp := strings.Fields(line)[0][len("time="):]
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err == nil && at.After(t) {
			return at, nil
		}
	}
	return time.Time{}, fmt.Errorf("no %q after %v in:\n%s", s, t, b)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1)*p + 0.5)
	return s[i]
}

// classic is what admins write by hand today (the connection-pinning
// recipe): restore the ct mark into the packet mark on every packet from
// the LAN in prerouting and on the router's own in output, set the ct mark of new connections by outgoing
// interface in postrouting, one rule per interface, masquerade per
// interface, and an ip rule and table per mark.
func classic(l *netlab.Lab, dir string) (func(), error) {
	ruleset := `table ip classic {
	chain pre { type filter hook prerouting priority mangle; policy accept; iifname "lan0" meta mark set ct mark; }
	chain out { type route hook output priority mangle; policy accept; meta mark set ct mark; }
	chain post { type filter hook postrouting priority mangle; policy accept;
		ct state new oifname "wan1" ct mark set 1
		ct state new oifname "wan2" ct mark set 2
	}
	chain nat { type nat hook postrouting priority srcnat; policy accept;
		oifname "wan1" masquerade
		oifname "wan2" masquerade
	}
}
`
	path := filepath.Join(dir, "classic.nft")
	if err := os.WriteFile(path, []byte(ruleset), 0o644); err != nil {
		return nil, err
	}
	cmds := [][]string{
		{"nft", "-f", path},
		{"ip", "rule", "add", "fwmark", "1", "table", "301"},
		{"ip", "rule", "add", "fwmark", "2", "table", "302"},
		{"ip", "route", "add", "default", "via", netlab.UplinkGateway4(1), "dev", "wan1", "table", "301"},
		{"ip", "route", "add", "default", "via", netlab.UplinkGateway4(2), "dev", "wan2", "table", "302"},
	}
	for _, c := range cmds {
		if out, err := l.Exec(l.Router, c...); err != nil {
			return nil, fmt.Errorf("%v: %s", err, out)
		}
	}
	return func() {
		l.Exec(l.Router, "nft", "delete", "table", "ip", "classic")
		l.Exec(l.Router, "ip", "rule", "del", "fwmark", "1", "table", "301")
		l.Exec(l.Router, "ip", "rule", "del", "fwmark", "2", "table", "302")
		l.Exec(l.Router, "ip", "route", "flush", "table", "301")
		l.Exec(l.Router, "ip", "route", "flush", "table", "302")
	}, nil
}

// startWanpin runs wanpin with cfg in the router namespace, logging to
// dir/wanpin.log (started afresh), with more arguments for wanpin run,
// and returns a function that stops it.
func startWanpin(l *netlab.Lab, bin, dir, cfg string, args ...string) (func(), error) {
	path := filepath.Join(dir, "wanpin.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "wanpin.log")
	os.Remove(logPath)
	// Never the machine's own D-Bus system bus, nor its /run/wanpin.
	argv := append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent", bin, "run", "--config", path,
		"--runtime-dir", filepath.Join(dir, "run")}, args...)
	p, err := l.Start(l.Router, logPath, argv...)
	if err != nil {
		return nil, err
	}
	if err := waitLog(logPath, "nftables applied", 20*time.Second); err != nil {
		exited := p.Exited()
		p.Close()
		return nil, fmt.Errorf("%w (process exited: %v, %v)", err, exited, p.Wait(0))
	}
	return func() { p.Signal(os.Interrupt); p.Wait(10 * time.Second); p.Close() }, nil
}

// oneUplinkConfig: two uplinks, all traffic through isp1 (isp2 is a
// backup), and a policy with n destination entries that the benchmark
// traffic does not match, so every new connection is looked up in it.
func oneUplinkConfig(n int) string {
	var b strings.Builder
	b.WriteString("[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\n\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\ntier = 2\n\n")
	b.WriteString("[[policy]]\nname = \"many\"\nuplinks = [\"isp2\"]\ndestinations = [\n")
	for i := 0; i < n; i++ {
		// Set elements only, never a packet's address: 10,000 disjoint
		// /30s do not fit in the documentation ranges.
		a := netip.AddrFrom4([4]byte{byte(100 + i>>14), byte(i >> 6), byte(i << 2), 0})
		fmt.Fprintf(&b, "  \"%s/30\",\n", a)
	}
	b.WriteString("]\n")
	return b.String()
}

func iperf(l *netlab.Lab, secs int) (float64, error) {
	out, err := l.Exec(l.LAN, "timeout", "60", "iperf3", "-c", netlab.ServerAddr4, "-p", fmt.Sprint(netlab.PortIperf),
		"-t", fmt.Sprint(secs), "-O", "1", "-J")
	if err != nil {
		return 0, fmt.Errorf("iperf3: %w: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

func waitLog(path, s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), s) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	return fmt.Errorf("wanpin did not apply within %v:\n%s", timeout, b)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minMax(xs []float64) (lo, hi float64) {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[0], s[len(s)-1]
}

func gbps(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.2f", x/1e9))
	}
	return strings.Join(parts, " ")
}
