package main

// The datapath benchmark (-only datapath): what a router does per packet
// and per connection, which one large-packet TCP stream hides.
//
// Three figures per configuration: the 64-byte UDP forwarding rate of
// established flows, the rate of new flows (every packet a new conntrack
// entry) and TCP connections per second. A measurement is one figure of
// one configuration, the configuration set up for it and torn down
// after, from an empty conntrack table. Cycle 1 measures every figure of
// every configuration once, cycle 2 again, and so on; within a cycle a
// figure's configurations run back to back (runOrder, rotated by one
// each cycle), so that the two sides of a ratio are measured seconds
// apart, under the same noise of a shared machine. Every ratio is taken
// within a cycle and the median of those per-cycle ratios is reported.
//
// WANPIN_BENCH_PERF=DIR records a profile of the machine (perf record -a
// -g) over each established-flows counting window and each new-flows
// measurement into DIR, to see where the CPU goes; the figures of such a
// run are lower.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// datapathISPs: one lab of 16 ISPs for every configuration. The
// 16-uplink configuration needs 16 ISPs; the others use two of them (and
// the router's main table has the 14 other default routes at higher
// metrics, which the routing lookup never reaches). One lab keeps the
// comparison fair: the same namespaces, veth pairs and server for every
// configuration, so a ratio differs only in the router's rules, never
// in which lab (and which moment of a shared machine) it ran.
const datapathISPs = 16

// Ports of the datapath benchmark at the server.
const (
	portConn     = 8090 // TCP: reads a short request, answers, closes
	newFlowPort0 = 10000
	newFlowPort1 = 19999 // new flows go to random ports of newFlowPort0..1
)

// flowPorts are the source ports of the 4 established flows.
var flowPorts = []int{40001, 40002, 40003, 40004}

// dpConfig is one router configuration of the datapath benchmark.
type dpConfig struct {
	name, short string
	setup       func(l *netlab.Lab, dir string) (stop func(), err error)
}

// dpMetric is one figure measured per configuration per cycle.
type dpMetric struct {
	name, unit string
	scale      float64 // the unit's size: values are divided by it
	measure    func(d *datapath) (float64, error)
}

// dpRatio is a ratio of two configurations' values of a metric.
type dpRatio struct {
	metric   int
	num, den int // configuration indexes
	name     string
	target   float64 // 0: none
}

// datapath holds the lab and what the measurements share.
type datapath struct {
	l       *netlab.Lab
	dir     string
	window  time.Duration
	lanMAC  string         // the router's lan0, the frames' destination
	srvDev  *os.File       // /proc/net/dev of the server namespace
	connLn  net.Listener   // the connection test's listener in the server
	connWG  sync.WaitGroup // its handlers
	verbose bool
	perfDir string // WANPIN_BENCH_PERF: profiles of the counting windows
	current string // the configuration being measured (its short name)
	clean   string // the router's state as the lab built it (routerState)
}

// wanpinConfig is oneUplinkConfig (isp1 carries everything, isp2 is a
// backup, one policy of entries destinations to isp2 that the traffic
// does not match) with uplinks-2 more backups of tier 2. The path of
// every packet stays isp1's whatever the number of uplinks: only the
// size of wanpin's rules changes.
func wanpinConfig(uplinks, entries int) string {
	cfg := oneUplinkConfig(entries)
	var extra strings.Builder
	for i := 3; i <= uplinks; i++ {
		fmt.Fprintf(&extra, "[[uplink]]\nname = \"isp%d\"\ninterface = \"wan%d\"\ntier = 2\n\n", i, i)
	}
	return strings.Replace(cfg, "[[policy]]", extra.String()+"[[policy]]", 1)
}

func runDatapath(bin string, cycles int, window time.Duration) error {
	if cycles < 1 {
		return fmt.Errorf("-cycles %d: want at least 1", cycles)
	}
	begin := time.Now()
	dir, bin, l, done, err := benchLab(bin, datapathISPs)
	if err != nil {
		return err
	}
	defer done()
	d := &datapath{l: l, dir: dir, window: window, verbose: *verbose, perfDir: os.Getenv("WANPIN_BENCH_PERF")}
	if err := d.start(); err != nil {
		return err
	}
	defer d.stop()

	wanpin := func(cfg string) func(l *netlab.Lab, dir string) (func(), error) {
		return func(l *netlab.Lab, dir string) (func(), error) { return startWanpin(l, bin, dir, cfg) }
	}
	configs := []dpConfig{
		{"no rules (one masquerade)", "no rules", func(l *netlab.Lab, dir string) (func(), error) {
			// As run() builds it.
			out, err := l.Exec(l.Router, "nft", `add table ip bare; add chain ip bare nat { type nat hook postrouting priority srcnat; }; add rule ip bare nat oifname "wan1" masquerade`)
			if err != nil {
				err = fmt.Errorf("%w: %s", err, out)
			}
			return func() { l.Exec(l.Router, "nft", "delete", "table", "ip", "bare") }, err
		}},
		{"classic hand-written CONNMARK rules", "classic", classic},
		{"wanpin, 2 uplinks, 1 policy entry", "wanpin 2", wanpin(wanpinConfig(2, 1))},
		{fmt.Sprintf("wanpin, %d uplinks, 1 policy entry", datapathISPs), fmt.Sprintf("wanpin %d", datapathISPs), wanpin(wanpinConfig(datapathISPs, 1))},
		{"wanpin, 2 uplinks, 10,000 policy entries", "wanpin 10k", wanpin(wanpinConfig(2, 10000))},
	}
	const noRules, classicRules, wanpin2, wanpin16, wanpin10k = 0, 1, 2, 3, 4
	// The order a cycle runs them in (rotated): wanpin (2), in every
	// ratio, next to classic and no rules, the ratios with the tightest
	// targets; 16 uplinks and 10,000 entries one further away.
	runOrder := []int{wanpin16, classicRules, wanpin2, noRules, wanpin10k}
	metrics := []dpMetric{
		{"64-byte UDP, 4 established flows", "kpps", 1e3, (*datapath).established},
		{"64-byte UDP, new flows", "kflows/s", 1e3, (*datapath).newFlows},
		{"TCP connections, 32 workers", "conn/s", 1, (*datapath).connections},
	}
	ratios := []dpRatio{
		{0, wanpin2, classicRules, "64-byte: wanpin (2) / classic", 1.10},
		{0, wanpin2, noRules, "64-byte: wanpin (2) / no rules", 0.90},
		{0, wanpin16, wanpin2, fmt.Sprintf("64-byte: %d uplinks / 2 uplinks", datapathISPs), 0.97},
		{0, wanpin10k, wanpin2, "64-byte: 10,000 entries / 1 entry", 0.97},
		{1, wanpin2, classicRules, "new flows: wanpin (2) / classic", 1.0},
		{1, wanpin2, noRules, "new flows: wanpin (2) / no rules", 0},
		{1, wanpin16, wanpin2, fmt.Sprintf("new flows: %d uplinks / 2 uplinks", datapathISPs), 0},
		{1, wanpin10k, wanpin2, "new flows: 10,000 entries / 1 entry", 0},
		{2, wanpin2, noRules, "connections: wanpin (2) / no rules", 0.95},
		{2, wanpin2, classicRules, "connections: wanpin (2) / classic", 0},
		{2, wanpin16, wanpin2, fmt.Sprintf("connections: %d uplinks / 2 uplinks", datapathISPs), 0},
		{2, wanpin10k, wanpin2, "connections: 10,000 entries / 1 entry", 0},
	}

	// values[metric][config][cycle]
	values := make([][][]float64, len(metrics))
	for m := range metrics {
		values[m] = make([][]float64, len(configs))
	}
	for c := 0; c < cycles; c++ {
		for m, mt := range metrics {
			var parts []string
			t0 := time.Now()
			for k := range runOrder {
				i := runOrder[(c+k)%len(runOrder)]
				v, err := d.measure(configs[i], mt)
				if err != nil {
					return fmt.Errorf("cycle %d, %s, %s: %w", c+1, configs[i].name, mt.name, err)
				}
				values[m][i] = append(values[m][i], v)
				parts = append(parts, fmt.Sprintf("%s %.1f", configs[i].short, v/mt.scale))
			}
			fmt.Fprintf(os.Stderr, "cycle %d/%d %s, %s: %s (%.1fs)\n", c+1, cycles, mt.name, mt.unit, strings.Join(parts, ", "), time.Since(t0).Seconds())
		}
	}

	// The table: each figure's median per configuration, then the ratios.
	fmt.Printf("datapath, %d cycles of %v per figure, one lab of %d ISPs\n", cycles, window, datapathISPs)
	for _, c := range configs {
		fmt.Printf("  %-11s %s\n", c.short+":", c.name)
	}
	fmt.Printf("%-40s", "figure (median, then min..max)")
	for _, c := range configs {
		fmt.Printf(" %13s", c.short)
	}
	fmt.Println()
	for m, mt := range metrics {
		fmt.Printf("%-40s", mt.name+", "+mt.unit)
		for i := range configs {
			fmt.Printf(" %13.1f", median(values[m][i])/mt.scale)
		}
		fmt.Printf("\n%-40s", "")
		for i := range configs {
			lo, hi := minMax(values[m][i])
			fmt.Printf(" %13s", fmt.Sprintf("%.0f..%.0f", lo/mt.scale, hi/mt.scale))
		}
		fmt.Println()
	}
	fmt.Println()
	fmt.Printf("%-44s %8s %10s %s\n", "ratio (median of per-cycle ratios)", "value", "target", "")
	for _, r := range ratios {
		var per []float64
		for c := 0; c < cycles; c++ {
			per = append(per, values[r.metric][r.num][c]/values[r.metric][r.den][c])
		}
		med := median(per)
		lo, hi, cover := medianInterval(per, 0.95)
		target, verdict := "", ""
		if r.target > 0 {
			target = fmt.Sprintf(">= %.2f", r.target)
			verdict = "ok"
			if med < r.target {
				verdict = "MISSED"
			}
			if lo < r.target && r.target <= hi {
				verdict += " (target inside the interval: not resolved)"
			}
		}
		fmt.Printf("%-44s %8.3f %10s %s\n", r.name, med, target, verdict)
		var s []string
		for _, x := range per {
			s = append(s, fmt.Sprintf("%.3f", x))
		}
		fmt.Printf("%-44s (median of %d: %s; %.0f%% interval of the median %.3f..%.3f)\n", "", cycles, strings.Join(s, " "), cover*100, lo, hi)
	}
	fmt.Printf("\nrun took %v\n", time.Since(begin).Round(time.Second))
	return nil
}

// medianInterval is a distribution-free confidence interval of the
// median of xs: the k-th smallest and k-th largest value, k as large as
// keeps the coverage (the chance that the true median lies inside, from
// the binomial distribution) at least conf. With 10 values and conf
// 0.95 it is the 2nd..9th, 97.9%.
func medianInterval(xs []float64, conf float64) (lo, hi, coverage float64) {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	// below[j] = P(Binomial(n, 1/2) <= j)
	below := make([]float64, n+1)
	p, sum := math.Pow(0.5, float64(n)), 0.0
	for j := 0; j <= n; j++ {
		sum += p
		below[j] = sum
		p = p * float64(n-j) / float64(j+1)
	}
	k := 1
	for k+1 <= n/2 && 1-2*below[k] >= conf {
		k++
	}
	return s[k-1], s[n-k], 1 - 2*below[k-1]
}

// measure sets cfg up, measures m once from an empty conntrack table,
// and tears cfg down.
func (d *datapath) measure(cfg dpConfig, m dpMetric) (float64, error) {
	t := time.Now()
	lap := func(what string) {
		if d.verbose {
			fmt.Fprintf(os.Stderr, "  %s %s: %v\n", cfg.short, what, time.Since(t).Round(time.Millisecond))
		}
		t = time.Now()
	}
	if err := d.flushConntrack(); err != nil {
		return 0, err
	}
	stop, err := cfg.setup(d.l, d.dir)
	if err != nil {
		return 0, err
	}
	defer func() {
		t = time.Now()
		stop()
		d.reset(cfg)
		lap("teardown")
	}()
	lap("setup")
	if d.verbose {
		out, _ := d.l.Exec(d.l.Router, "nft", "list", "ruleset")
		fmt.Fprintf(os.Stderr, "  %s: the router's ruleset has %d lines, %d of them naming a wan interface\n",
			cfg.short, strings.Count(out, "\n"), strings.Count(out, "\"wan"))
	}
	d.current = cfg.short
	d.settle()
	lap("settle")
	v, err := m.measure(d)
	if err != nil {
		return 0, err
	}
	lap(m.name)
	return v, nil
}

// routerState is what a configuration may leave behind in the router:
// rules, routes, nftables and the reverse-path filter settings.
func (d *datapath) routerState() string {
	out, _ := d.l.Exec(d.l.Router, "sh", "-c",
		"ip rule; ip route show table all | grep -v '^fe80\\|^local fe80\\|^multicast'; nft list ruleset; grep -H . /proc/sys/net/ipv4/conf/*/rp_filter")
	return out
}

// reset puts the router back as the lab built it after cfg's teardown.
// The lab's uplinks have rp_filter 0, which wanpin leaves alone (it
// only loosens a strict filter); setting it again costs nothing and
// keeps every configuration measured under the same reverse-path
// setting whatever a configuration did. The rest is checked, not
// repaired.
func (d *datapath) reset(cfg dpConfig) {
	var sets []string
	for i := 1; i <= d.l.ISPs(); i++ {
		sets = append(sets, fmt.Sprintf("net.ipv4.conf.wan%d.rp_filter=0", i))
	}
	if out, err := d.l.Exec(d.l.Router, append([]string{"sysctl", "-q", "-w"}, sets...)...); err != nil {
		fmt.Fprintf(os.Stderr, "  resetting rp_filter: %v: %s\n", err, out)
	}
	if now := d.routerState(); now != d.clean {
		fmt.Fprintf(os.Stderr, "  %s left the router changed:\n%s\n", cfg.short, lineDiff(d.clean, now))
	}
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !inb[l] {
			out = append(out, "  - "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ina[l] {
			out = append(out, "  + "+l)
		}
	}
	return strings.Join(out, "\n")
}

// settle waits, up to 3 seconds, until the processes in the router's
// namespace (the daemon) have used under 10% of a CPU over 200ms: a
// daemon still busy after its first apply would take CPU from the
// packets.
func (d *datapath) settle() {
	out, _ := exec.Command("ip", "netns", "pids", d.l.Router).Output()
	pids := strings.Fields(string(out))
	if len(pids) == 0 {
		return
	}
	ticks := func() (sum uint64) {
		for _, pid := range pids {
			b, err := os.ReadFile("/proc/" + pid + "/stat")
			if err != nil {
				continue
			}
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
			var u, s uint64
			fmt.Sscan(f[11], &u)
			fmt.Sscan(f[12], &s)
			sum += u + s
		}
		return sum
	}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		t0 := ticks()
		time.Sleep(200 * time.Millisecond)
		if ticks()-t0 <= 2 { // USER_HZ is 100: 20ms of 200
			return
		}
	}
	fmt.Fprintf(os.Stderr, "  the router's processes %v still busy after 3s\n", pids)
}

// start prepares what the measurements share: the server's sink for the
// generated datagrams, its /proc/net/dev, the connection listener, and
// the router's LAN MAC address.
func (d *datapath) start() error {
	l := d.l
	out, err := l.Exec(l.Router, "ip", "-o", "link", "show", "dev", "lan0")
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "link/ether" && i+1 < len(f) {
			d.lanMAC = f[i+1]
		}
	}
	if d.lanMAC == "" {
		return fmt.Errorf("no MAC address of the router's lan0 in %q", out)
	}
	// New flows are dropped at the server before anything answers them
	// (no port unreachable, no socket): the benchmark counts what
	// arrives. The server's namespace has no conntrack.
	if out, err := l.Exec(l.Server, "nft", fmt.Sprintf(
		"add table ip sink; add chain ip sink pre { type filter hook prerouting priority -300; }; add rule ip sink pre ip daddr %s udp dport %d-%d drop",
		netlab.ServerAddr4, newFlowPort0, newFlowPort1)); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	// /proc/thread-self/net/dev opened in the server's namespace keeps
	// reading that namespace's counters from any thread.
	err = netlab.InNetNS(l.Server, func() error {
		var err error
		if d.srvDev, err = os.Open("/proc/thread-self/net/dev"); err != nil {
			return err
		}
		d.connLn, err = net.Listen("tcp4", net.JoinHostPort(netlab.ServerAddr4, fmt.Sprint(portConn)))
		return err
	})
	if err != nil {
		return fmt.Errorf("in the server namespace: %w", err)
	}
	d.connWG.Add(1)
	go d.serveConns()
	d.clean = d.routerState()
	return nil
}

func (d *datapath) stop() {
	if d.connLn != nil {
		d.connLn.Close()
		d.connWG.Wait()
	}
	if d.srvDev != nil {
		d.srvDev.Close()
	}
}

// serveConns answers each connection's request line with a short line
// and closes first, so that the TIME_WAIT stays at the server and the
// LAN host's ports are free again at once.
func (d *datapath) serveConns() {
	defer d.connWG.Done()
	for {
		c, err := d.connLn.Accept()
		if err != nil {
			return
		}
		d.connWG.Add(1)
		go func() {
			defer d.connWG.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var buf [64]byte
			if _, err := c.Read(buf[:]); err != nil {
				return
			}
			c.Write([]byte("ok\n"))
		}()
	}
}

// rxPackets sums the packets received on the server's interfaces.
func (d *datapath) rxPackets() (uint64, error) {
	if _, err := d.srvDev.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	b, err := io.ReadAll(d.srvDev)
	if err != nil {
		return 0, err
	}
	var sum uint64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		var bytes, packets uint64
		if _, err := fmt.Sscan(rest, &bytes, &packets); err != nil {
			continue // the header lines
		}
		sum += packets
	}
	return sum, nil
}

func (d *datapath) flushConntrack() error {
	// conntrack -F exits 0 on an empty table too.
	if out, err := d.l.Exec(d.l.Router, "conntrack", "-F"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func (d *datapath) conntrackCount() int { return d.routerSysctl("nf_conntrack_count") }

func (d *datapath) conntrackMax() int { return d.routerSysctl("nf_conntrack_max") }

// routerSysctl reads a conntrack setting as the router's namespace sees it.
func (d *datapath) routerSysctl(name string) int {
	out, _ := d.l.Exec(d.l.Router, "cat", "/proc/sys/net/netfilter/"+name)
	var n int
	fmt.Sscan(out, &n)
	return n
}

// frame is a trafgen packet: a 64-byte Ethernet frame as counted on a
// wire (60 bytes and the 4 of the frame check sequence, which a veth
// does not carry): Ethernet, IPv4 and UDP headers and 18 bytes of zeros.
func (d *datapath) frame(sport, dport string) string {
	return fmt.Sprintf("{ eth(da=%s), ipv4(sa=%s, da=%s, ttl=64), udp(sp=%s, dp=%s), fill(0x00, 18) }\n",
		d.lanMAC, netlab.LANHost4, netlab.ServerAddr4, sport, dport)
}

// trafgen sends the packets of cfg from the LAN host as fast as one CPU
// can and counts, once they arrive at the server, those it receives
// over length; it returns the packets counted and the seconds they took.
func (d *datapath) trafgen(name, cfg string, length time.Duration) (uint64, float64, error) {
	path := filepath.Join(d.dir, name+".trafgen")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return 0, 0, err
	}
	logPath := filepath.Join(d.dir, name+".log")
	os.Remove(logPath)
	before, err := d.rxPackets()
	if err != nil {
		return 0, 0, err
	}
	// ip netns exec: trafgen reads the device from /sys, which must be
	// the LAN namespace's. One process (-P 1); --no-sock-mem and
	// --notouch-irq: trafgen leaves the system's socket memory and IRQ
	// settings alone (-A is in its help but not in its getopt).
	p, err := d.l.Start(d.l.LAN, logPath, "ip", "netns", "exec", d.l.LAN,
		"trafgen", "-i", path, "-o", "eth0", "-P", "1", "--no-sock-mem", "--notouch-irq")
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	exited := func(when string) error {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("trafgen exited %s: %s", when, b)
	}
	// Counting starts once packets arrive, plus a moment for the rate
	// to settle (trafgen fills its ring first).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		n, err := d.rxPackets()
		if err != nil {
			return 0, 0, err
		}
		if n >= before+1000 {
			break
		}
		if p.Exited() {
			return 0, 0, exited("before sending")
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("no packets at the server 5s after starting trafgen (%d)", n-before)
		}
	}
	time.Sleep(50 * time.Millisecond)
	n0, err := d.rxPackets()
	t0 := time.Now()
	if err != nil {
		return 0, 0, err
	}
	cpu0 := cpuTimes()
	if d.perfDir != "" && name == "established" {
		// A profile of every CPU over the window (it costs some of
		// the rate): perf report -i DIR/<configuration>-established.data.
		// Only there: perf takes seconds to start and stop, longer
		// than the pieces of the new flows.
		out := filepath.Join(d.perfDir, strings.ReplaceAll(d.current, " ", "")+"-established.data")
		if b, err := exec.Command("perf", "record", "-q", "-B", "-e", "cpu-clock", "-F", "999", "-a", "-g", "-o", out, "--",
			"sleep", fmt.Sprint(length.Seconds())).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "  perf record: %v: %s\n", err, b)
		}
	} else {
		time.Sleep(length)
	}
	n1, err := d.rxPackets()
	t1 := time.Now()
	if err != nil {
		return 0, 0, err
	}
	if d.verbose {
		fmt.Fprintf(os.Stderr, "  %s: %s\n", name, cpuShares(cpu0, cpuTimes()))
	}
	if p.Exited() {
		return 0, 0, exited("while counting")
	}
	// trafgen's sender is a child of the process started: the whole
	// group gets the interrupt, as from a terminal.
	syscall.Kill(-p.Pid(), syscall.SIGINT)
	if err := p.Wait(5 * time.Second); err != nil && !p.Exited() {
		fmt.Fprintf(os.Stderr, "  trafgen did not stop on SIGINT: %v\n", err)
	}
	return n1 - n0, t1.Sub(t0).Seconds(), nil
}

// established: 4 flows of 64-byte datagrams, their conntrack entries
// made and answered first (ESTABLISHED, as a real flow's are after its
// first reply), then counted at the server, which drops them from then
// on.
func (d *datapath) established() (float64, error) {
	if err := d.warmFlows(); err != nil {
		return 0, err
	}
	if out, err := d.l.Exec(d.l.Server, "nft", fmt.Sprintf(
		"add table ip sinkest; add chain ip sinkest pre { type filter hook prerouting priority -300; }; add rule ip sinkest pre ip daddr %s udp dport %d drop",
		netlab.ServerAddr4, netlab.PortUDP)); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	defer d.l.Exec(d.l.Server, "nft", "delete", "table", "ip", "sinkest")
	var cfg strings.Builder
	for _, p := range flowPorts {
		cfg.WriteString(d.frame(fmt.Sprint(p), fmt.Sprint(netlab.PortUDP)))
	}
	n, secs, err := d.trafgen("established", cfg.String(), d.window)
	if err == nil && d.verbose {
		out, _ := d.l.Exec(d.l.Router, "conntrack", "-L", "-p", "udp", "--dport", fmt.Sprint(netlab.PortUDP))
		fmt.Fprintf(os.Stderr, "  established flows: %d conntrack entries, %d of them unreplied\n",
			strings.Count(out, "src="+netlab.LANHost4), strings.Count(out, "[UNREPLIED]"))
	}
	return float64(n) / secs, err
}

// warmFlows sends one datagram of each established flow from the LAN
// host to the server's UDP service and waits for its answer: the
// router's conntrack entries of the flows have seen their reply.
func (d *datapath) warmFlows() error {
	var conns []*net.UDPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	err := netlab.InNetNS(d.l.LAN, func() error {
		for _, p := range flowPorts {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(netlab.LANHost4), Port: p})
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("in the LAN namespace: %w", err)
	}
	dst := &net.UDPAddr{IP: net.ParseIP(netlab.ServerAddr4), Port: netlab.PortUDP}
	for _, c := range conns {
		var answered bool
		for try := 0; try < 5 && !answered; try++ {
			c.WriteToUDP([]byte("warm\n"), dst)
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			var buf [128]byte
			if _, _, err := c.ReadFromUDP(buf[:]); err == nil {
				answered = true
			}
		}
		if !answered {
			return fmt.Errorf("no answer to the warm-up datagram from port %d", c.LocalAddr().(*net.UDPAddr).Port)
		}
	}
	return nil
}

// newFlows: 64-byte datagrams with a random source and destination port
// each (some 645 million pairs: every packet is a new conntrack entry
// but for a few in ten thousand), counted at the server.
//
// The conntrack table must not fill: at its nf_conntrack_max (a global
// setting, not the lab's to change) every new entry first evicts an
// unanswered one, another cost. So the window is counted in pieces,
// trafgen stopped and the router's table flushed between them, each
// piece short enough to stay under 60% of the table; pieces shrink if
// one ends above that.
func (d *datapath) newFlows() (float64, error) {
	cfg := d.frame("drnd(1024, 65535)", fmt.Sprintf("drnd(%d, %d)", newFlowPort0, newFlowPort1))
	ctMax := d.conntrackMax()
	piece := 500 * time.Millisecond
	if d.perfDir != "" {
		// The whole of the pieces (trafgen's starts and the flushes
		// between them included, a small part): perf report -i
		// DIR/<configuration>-newflows.data.
		out := filepath.Join(d.perfDir, strings.ReplaceAll(d.current, " ", "")+"-newflows.data")
		perf := exec.Command("perf", "record", "-q", "-B", "-e", "cpu-clock", "-F", "999", "-a", "-g", "-o", out)
		if err := perf.Start(); err == nil {
			time.Sleep(time.Second) // perf takes a while to start
			defer func() { perf.Process.Signal(os.Interrupt); perf.Wait() }()
		}
	}
	var packets uint64
	var secs float64
	var worst int
	for left := d.window; left > 0; {
		length := min(piece, left)
		n, s, err := d.trafgen("newflows", cfg, length)
		if err != nil {
			return 0, err
		}
		packets += n
		secs += s
		left -= length
		count := d.conntrackCount()
		worst = max(worst, count)
		if float64(count) > 0.6*float64(ctMax) && piece > 50*time.Millisecond {
			piece /= 2
		}
		if err := d.flushConntrack(); err != nil {
			return 0, err
		}
	}
	if worst >= ctMax*99/100 {
		fmt.Fprintf(os.Stderr, "  the conntrack table filled (%d entries of %d): the new flows figure is low\n", worst, ctMax)
	}
	if d.verbose {
		fmt.Fprintf(os.Stderr, "  new flows: at most %d conntrack entries of %d\n", worst, ctMax)
	}
	return float64(packets) / secs, nil
}

// connClientEnv, when set, makes the bench binary the client of the
// connection test (see connections): a process of its own inside the
// LAN namespace.
const connClientEnv = "WANPIN_BENCH_CONN_CLIENT"

func init() {
	if spec := os.Getenv(connClientEnv); spec != "" {
		os.Exit(connClient(spec))
	}
}

// connResult is what the connection client reports on its stdout.
type connResult struct {
	Done, Failed int64
	Seconds      float64
	FirstError   string
}

// connections: 32 workers in the LAN namespace, each connecting to the
// server, sending a short request, reading the answer to the end and
// closing, over and over; the connections completed in the window.
//
// The workers run in a process of their own started in the LAN
// namespace (this binary again), not on threads of this one switched
// into it: a goroutine locked to its thread hands its thread off at
// every blocking read, and those futex wake-ups were a good part of the
// CPU in a profile, the same for every configuration and so diluting
// the router's share.
func (d *datapath) connections() (float64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	spec := fmt.Sprintf("%s,%d,%s,%s", net.JoinHostPort(netlab.ServerAddr4, fmt.Sprint(portConn)), 32, 300*time.Millisecond, d.window)
	out, err := d.l.Exec(d.l.LAN, "env", connClientEnv+"="+spec, exe)
	if err != nil {
		return 0, fmt.Errorf("connection client: %w: %s", err, out)
	}
	var r connResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("connection client: %w: %s", err, out)
	}
	if r.Done == 0 {
		return 0, fmt.Errorf("no connection completed: %s", r.FirstError)
	}
	if r.Failed > 0 {
		// A SYN lost on a busy machine costs a worker a second: said,
		// not fatal.
		fmt.Fprintf(os.Stderr, "  %d of %d connections failed, the first: %s\n", r.Failed, r.Failed+r.Done, r.FirstError)
	}
	return float64(r.Done) / r.Seconds, nil
}

// connClient runs the connection test's workers (spec: address,
// workers, warm-up, window) and prints a connResult; it returns the exit
// status.
func connClient(spec string) int {
	var addr string
	var workers int
	var warm, window time.Duration
	f := strings.Split(spec, ",")
	if len(f) == 4 {
		addr = f[0]
		fmt.Sscan(f[1], &workers)
		warm, _ = time.ParseDuration(f[2])
		window, _ = time.ParseDuration(f[3])
	}
	if addr == "" || workers < 1 || window <= 0 {
		fmt.Fprintf(os.Stderr, "%s=%q: want address,workers,warm-up,window\n", connClientEnv, spec)
		return 2
	}
	var done, failed atomic.Int64
	var counting atomic.Bool
	var firstErr atomic.Value
	stopAt := time.Now().Add(warm + window)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := net.Dialer{Timeout: 2 * time.Second}
			var buf [64]byte
			for time.Now().Before(stopAt) {
				err := func() error {
					c, err := dialer.Dial("tcp4", addr)
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := c.Write([]byte("GET\n")); err != nil {
						return err
					}
					n := 0
					for n < len(buf) {
						m, err := c.Read(buf[n:])
						n += m
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							return err
						}
					}
					if string(buf[:n]) != "ok\n" {
						return fmt.Errorf("answer %q", buf[:n])
					}
					return nil
				}()
				if !counting.Load() {
					continue
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					done.Add(1)
				}
			}
		}()
	}
	time.Sleep(warm)
	counting.Store(true)
	t0 := time.Now()
	n0 := done.Load()
	time.Sleep(time.Until(stopAt))
	n1 := done.Load()
	t1 := time.Now()
	wg.Wait()
	r := connResult{Done: n1 - n0, Failed: failed.Load(), Seconds: t1.Sub(t0).Seconds()}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// cpuTimes reads /proc/stat's per-CPU lines: user, nice, system, idle,
// iowait, irq, softirq, steal (in ticks), by CPU.
func cpuTimes() [][]uint64 {
	b, _ := os.ReadFile("/proc/stat")
	var out [][]uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var v []uint64
		for _, x := range f[1:9] {
			var n uint64
			fmt.Sscan(x, &n)
			v = append(v, n)
		}
		out = append(out, v)
	}
	return out
}

// busyNanos is the CPU time the machine spent working between two
// cpuTimes, on all CPUs: user, nice, system, irq and softirq, without
// idle, iowait and steal (the time the hypervisor gave another guest).
func busyNanos(a, b [][]uint64) float64 {
	var ticks uint64
	for c := range min(len(a), len(b)) {
		for _, k := range []int{0, 1, 2, 5, 6} {
			ticks += b[c][k] - a[c][k]
		}
	}
	return float64(ticks) * 1e9 / 100 // USER_HZ
}

// cpuShares says where each CPU's time went between two cpuTimes.
func cpuShares(a, b [][]uint64) string {
	names := []string{"usr", "nice", "sys", "idle", "iowait", "irq", "soft", "steal"}
	var parts []string
	for c := range min(len(a), len(b)) {
		var total uint64
		for k := range b[c] {
			total += b[c][k] - a[c][k]
		}
		if total == 0 {
			continue
		}
		var s []string
		for k, name := range names {
			if d := b[c][k] - a[c][k]; d*100/total >= 2 {
				s = append(s, fmt.Sprintf("%s %d%%", name, d*100/total))
			}
		}
		parts = append(parts, fmt.Sprintf("cpu%d: %s", c, strings.Join(s, " ")))
	}
	return strings.Join(parts, "; ")
}
