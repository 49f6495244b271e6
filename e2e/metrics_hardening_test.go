package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/internal/netlab"
	"github.com/wanpin/wanpin/pkg/bus"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/policy"
)

// The attacks of issue 13 on the metrics port and on Status, each made by
// an unprivileged user. On TCP that is uid attackerUID, which needs no
// passwd entry (setpriv only sets ids); dbus-daemon drops a caller whose
// groups it cannot look up, so the D-Bus attacks are made by nobody.
const (
	attackerUID = 4242
	busUserUID  = 65534
)

// helperEnv selects the helper that TestHelperProcess runs when the test
// binary is started again as the attacker (see startHelper).
const helperEnv = "WANPIN_E2E_HELPER"

// procCPU is the user+system CPU time the process has used so far.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("reading the daemon's stat: %v", err)
	}
	// Fields after the command name, which may hold spaces and ends at
	// the last ')': state is field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on every Linux architecture Debian ships.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procMem is the process's resident memory now and at its peak, in MB.
func procMem(t *testing.T, pid int) (rss, hwm float64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the daemon's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// attackerBinary copies this test binary where the attacker may execute
// it: go test's own copy sits in a directory only root can enter.
func attackerBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "wanpin-e2e-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "helper")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyExecutable(self, bin); err != nil {
		t.Fatalf("copying the test binary for the attacker: %v", err)
	}
	return bin
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// helper is one unprivileged helper process: it reads its orders from
// stdin (closing it ends the helper) and reports lines on stdout.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	last  map[string]string // its latest report, key=value
	lines []string
	done  chan struct{}
}

// startHelper runs TestHelperProcess's helper kind as the attacker inside
// the router's namespace, with env added.
func startHelper(t *testing.T, l *netlab.Lab, uid int, kind string, env ...string) *helper {
	t.Helper()
	bin := attackerBinary(t)
	cmd := exec.Command("nsenter", "--net=/run/netns/"+l.Router, "--",
		"setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups",
		bin, "-test.run", "^TestHelperProcess$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+kind), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the %s helper: %v", kind, err)
	}
	h := &helper{cmd: cmd, stdin: stdin, last: map[string]string{}, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "helper: ")
			if !ok {
				continue
			}
			h.mu.Lock()
			h.lines = append(h.lines, line)
			for _, kv := range strings.Fields(line) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					h.last[k] = v
				}
			}
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// get is the helper's latest report of key, as a number.
func (h *helper) get(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, _ := strconv.Atoi(h.last[key])
	return n
}

// stop closes the helper's stdin and waits for it to exit.
func (h *helper) stop(t *testing.T) {
	t.Helper()
	if h.stdin == nil {
		return
	}
	h.stdin.Close()
	h.stdin = nil
	select {
	case <-h.done:
	case <-time.After(20 * time.Second):
		h.cmd.Process.Kill()
		t.Errorf("helper did not exit when told to")
	}
	h.cmd.Wait()
}

// TestHelperProcess is the attacker's side, run by startHelper as an
// unprivileged user; as a test of its own it does nothing.
func TestHelperProcess(t *testing.T) {
	kind := os.Getenv(helperEnv)
	if kind == "" {
		t.Skip("a helper for other tests")
	}
	quit := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(quit)
	}()
	switch kind {
	case "hold":
		holdConnections(quit)
	case "calls":
		callBus(quit)
	default:
		fmt.Printf("helper: error=unknown-kind\n")
	}
	os.Exit(0) // before the testing package prints anything of its own
}

// holdConnections keeps HOLD_N keep-alive connections to HOLD_ADDR open,
// as issue 13's attacker did: each makes one request, then idles, reading
// nothing more; a connection the server closes is dialled again. Every
// 100 ms it reports how many are open, how many dials it has made and how
// many of them failed, and how many connections the server closed.
//
// Dials go out one a millisecond, not in bursts: a thousand SYNs at once
// overflow the kernel's per-CPU input queue (net.core.netdev_max_backlog,
// shared by loopback and the uplinks' veths), which drops everyone's
// packets, the health probes' included (seen: 2,000 drops in
// /proc/net/softnet_stat and probes timing out). That flood is the
// kernel's to bear, from any local user at any port; what is tested here
// is what the daemon holds.
func holdConnections(quit <-chan struct{}) {
	n, _ := strconv.Atoi(os.Getenv("HOLD_N"))
	addr := os.Getenv("HOLD_ADDR")
	var open, dials, failed, closed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// A token for each connection to (re)dial.
	need := make(chan struct{}, n)
	for range n {
		need <- struct{}{}
	}
	dial := func() {
		defer wg.Done()
		dials.Add(1)
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			failed.Add(1)
			need <- struct{}{}
			return
		}
		open.Add(1)
		ended := make(chan struct{})
		go func() {
			select {
			case <-stop:
			case <-ended:
			}
			c.Close()
		}()
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: wanpin\r\n\r\n")
		io.Copy(io.Discard, c) // until the server closes it (or at stop)
		close(ended)
		open.Add(-1)
		select {
		case <-stop:
		default:
			closed.Add(1)
			need <- struct{}{}
		}
	}
	report := func() {
		fmt.Printf("helper: open=%d dials=%d failed=%d closed=%d\n", open.Load(), dials.Load(), failed.Load(), closed.Load())
	}
	pace := time.NewTicker(time.Millisecond)
	defer pace.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-quit:
			break loop
		case <-tick.C:
			report()
		case <-pace.C:
			select {
			case <-need:
				wg.Add(1)
				go dial()
			default:
			}
		}
	}
	close(stop)
	wg.Wait()
	report()
	fmt.Printf("helper: released=1\n")
}

// callBus calls CALL (status or explain) over D-Bus CALL_N times, one
// after the other on one connection, and reports how many were answered,
// refused for the rate (LimitExceeded) or failed otherwise, and how long
// they took in all.
func callBus(quit <-chan struct{}) {
	n, _ := strconv.Atoi(os.Getenv("CALL_N"))
	c, err := bus.Dial()
	if err != nil {
		fmt.Printf("helper: error=dial\n")
		return
	}
	defer c.Close()
	call := func() error { _, err := c.Status(context.Background()); return err }
	if os.Getenv("CALL") == "explain" {
		f := policy.Flow{Dst: netip.MustParseAddr("203.0.113.10"), Proto: 6, DPort: 443}
		call = func() error { _, err := c.Explain(context.Background(), f); return err }
	}
	answered, limited, failed := 0, 0, 0
	var firstErr string
	start := time.Now()
	for range n {
		switch err := call(); {
		case err == nil:
			answered++
		case strings.Contains(err.Error(), "explains a second per user"):
			limited++
		default:
			failed++
			if firstErr == "" {
				firstErr = strconv.Quote(err.Error())
			}
		}
	}
	fmt.Printf("helper: answered=%d limited=%d failed=%d took_us=%d first_error=%s done=1\n",
		answered, limited, failed, time.Since(start).Microseconds(), firstErr)
	<-quit
}

// fillConntrack creates n entries in the router's conntrack table, split
// evenly over marks: UDP from LAN addresses to the server, no traffic,
// ten minutes' timeout. Two connections work at once (two CPUs).
func fillConntrack(t *testing.T, l *netlab.Lab, n int, marks []uint32) {
	t.Helper()
	h, err := netns.GetFromName(l.Router)
	if err != nil {
		t.Fatalf("opening the router's namespace: %v", err)
	}
	defer h.Close()
	dst := netip.MustParseAddr(netlab.ServerAddr4)
	var wg sync.WaitGroup
	errs := make(chan error, len(marks))
	for mi, mark := range marks {
		wg.Go(func() {
			c, err := conntrack.Dial(&netlink.Config{NetNS: int(h)})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			per := n / len(marks)
			for i := range per {
				// Distinct sources per mark: 192.0.2.<64 + 8*mark index + i/60000>.
				src := netip.AddrFrom4([4]byte{192, 0, 2, byte(64 + 8*mi + i/60000)})
				f := conntrack.NewFlow(17, 0, src, dst, uint16(1024+i%60000), 53, 600, mark)
				if err := c.Create(f); err != nil {
					errs <- fmt.Errorf("entry %d of mark %#x: %w", i, mark, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("filling conntrack: %v", err)
	}
}

// TestStatusCheapWithBigConntrack: with 200,000 conntrack entries pinned
// to the uplinks, 100 `wanpin status` from an unprivileged user cost the
// daemon under 2 s of CPU in all (issue 13 measured 42 s and 460 MB when
// every call dumped the table), and so do a few thousand Status calls made
// straight over D-Bus; root's `wanpin status` answers at once. The pinned
// counts still come: from the counter off the loop, at its own pace. And
// four unprivileged callers at once, as fast as the bus lets them, change
// no health verdict: what they cost the daemon is bounded by the bus.
func TestStatusCheapWithBigConntrack(t *testing.T) {
	const entries = 200_000
	l := newLab(t, 2)
	d := startWanpin(t, l, tcpHealth, "--log-level", "debug")
	pid := d.proc.Pid()
	var s core.Status
	waitUntil(t, 10*time.Second, "every uplink and family up with answered probes", func() (bool, string) {
		s = statusOf(t, d)
		bad := allUp(s)
		return bad == "", bad
	})
	marks := []uint32{uint32(s.Uplinks[0].Mark), uint32(s.Uplinks[1].Mark)}
	start := time.Now()
	fillConntrack(t, l, entries, marks)
	t.Logf("created %d conntrack entries in %v", entries, time.Since(start).Round(time.Millisecond))
	// The counter reports them (each status asks it for a newer count,
	// which it takes at its own pace).
	waitUntil(t, 30*time.Second, "the pinned counts to include the entries", func() (bool, string) {
		s := statusOf(t, d)
		return s.Uplinks[0].Pinned >= entries/2 && s.Uplinks[1].Pinned >= entries/2,
			fmt.Sprintf("pinned %d, %d (age %vs)", s.Uplinks[0].Pinned, s.Uplinks[1].Pinned, s.PinnedAge)
	})
	rss0, _ := procMem(t, pid)

	cpu0, wall0 := procCPU(t, pid), time.Now()
	for i := range 100 {
		if out, code := d.cli(busUserUID, "status"); code != 0 {
			t.Fatalf("status %d as uid %d: %d %s", i, busUserUID, code, out)
		}
	}
	cliCPU, cliWall := procCPU(t, pid)-cpu0, time.Since(wall0)
	rss1, hwm1 := procMem(t, pid)
	t.Logf("100 unprivileged `wanpin status`: daemon CPU %v over %v; resident %.1f -> %.1f MB (peak %.1f)",
		cliCPU, cliWall.Round(time.Millisecond), rss0, rss1, hwm1)
	if cliCPU >= 2*time.Second {
		t.Errorf("100 unprivileged status calls cost the daemon %v of CPU, want < 2s", cliCPU)
	}

	// Straight over D-Bus, as fast as the bus lets one caller go.
	const direct = 3000
	cpu0, wall0 = procCPU(t, pid), time.Now()
	h := startHelper(t, l, busUserUID, "calls", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, "CALL=status", fmt.Sprintf("CALL_N=%d", direct))
	waitUntil(t, 60*time.Second, "the D-Bus helper's calls", func() (bool, string) {
		return h.get("done") == 1, strings.Join(h.lines, "; ")
	})
	if h.get("answered") != direct {
		t.Errorf("%d of %d Status calls answered: %s", h.get("answered"), direct, strings.Join(h.lines, "; "))
	}
	busCPU, busWall := procCPU(t, pid)-cpu0, time.Since(wall0)
	h.stop(t)
	_, hwm2 := procMem(t, pid)
	t.Logf("%d unprivileged D-Bus Status calls (%d answered in %v): daemon CPU %v over %v (%v a call); peak resident %.1f MB",
		direct, h.get("answered"), time.Duration(h.get("took_us"))*time.Microsecond, busCPU, busWall.Round(time.Millisecond),
		busCPU/direct, hwm2)
	// The bound is 100 calls under 2 s (20 ms a call); 2 ms a
	// call keeps ten times under it and above a loaded machine's 0.7 ms
	// (CI once measured 2.02 s for 3,000 against a 2 s bound; 0.2 ms a
	// call when idle).
	if limit := time.Duration(direct) * 2 * time.Millisecond; busCPU >= limit {
		t.Errorf("%d unprivileged D-Bus Status calls cost the daemon %v of CPU, want < %v", direct, busCPU, limit)
	}

	// Four callers at once, for rounds of every uplink and family.
	const flooders, each = 4, 4000
	verdicts := strings.Count(d.log(), "health verdict")
	cpu0, wall0 = procCPU(t, pid), time.Now()
	from := probeRounds(l)
	var fs []*helper
	for range flooders {
		fs = append(fs, startHelper(t, l, busUserUID, "calls", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, "CALL=status", fmt.Sprintf("CALL_N=%d", each)))
	}
	waitUntil(t, 120*time.Second, "the four callers' calls", func() (bool, string) {
		done, lines := 0, []string{}
		for _, f := range fs {
			done += f.get("done")
			lines = append(lines, f.lines...)
		}
		return done == flooders, strings.Join(lines, "; ")
	})
	floodCPU, floodWall := procCPU(t, pid)-cpu0, time.Since(wall0)
	rounds := probeRounds(l)
	for i := range rounds {
		rounds[i] -= from[i]
	}
	for _, f := range fs {
		if f.get("answered") != each {
			t.Errorf("%d of %d Status calls answered: %s", f.get("answered"), each, strings.Join(f.lines, "; "))
		}
		f.stop(t)
	}
	t.Logf("%d unprivileged callers x %d Status calls: daemon CPU %v over %v (%.0f%% of a core, %v a call); probe rounds meanwhile %v",
		flooders, each, floodCPU, floodWall.Round(time.Millisecond), 100*floodCPU.Seconds()/floodWall.Seconds(), floodCPU/(flooders*each), rounds)
	if n := strings.Count(d.log(), "health verdict"); n != verdicts {
		t.Errorf("%d health verdicts during the calls", n-verdicts)
	}
	if bad := allUp(statusOf(t, d)); bad != "" {
		t.Errorf("after the calls: %s", bad)
	}

	// Root's status: timed, and logged rather than asserted tightly.
	var took []time.Duration
	for range 5 {
		t0 := time.Now()
		if out, code := d.cli(0, "status"); code != 0 {
			t.Fatalf("root's status: %d %s", code, out)
		}
		took = append(took, time.Since(t0))
	}
	slices.Sort(took)
	t.Logf("root's `wanpin status` (whole CLI run): %v", took)
	if took[len(took)/2] > time.Second {
		t.Errorf("root's status took %v (median of %v)", took[len(took)/2], took)
	}
	if strings.Contains(d.log(), "counting pinned connections") {
		t.Errorf("counting failed:\n%s", d.log())
	}
}

// tcpHealth is two uplinks probed over TCP in both families: a TCP
// probe opens a socket every round, so a daemon out of file descriptors
// fails it at once (issue 13: "too many open files", both uplinks down).
// The server counts each probe as a connection from the uplink's address,
// which is how probe rounds are counted here.
const tcpHealth = `
[[uplink]]
name = "isp1"
interface = "wan1"

[uplink.health]
method = "tcp"
targets = ["203.0.113.10:8080", "[2001:db8:ff::10]:8080"]

[[uplink]]
name = "isp2"
interface = "wan2"

[uplink.health]
method = "tcp"
targets = ["203.0.113.10:8080", "[2001:db8:ff::10]:8080"]
`

// probeRounds is how many probes of each uplink and family the server
// has seen: isp1/v4, isp1/v6, isp2/v4, isp2/v6.
func probeRounds(l *netlab.Lab) [4]int {
	seen := l.Seen()
	return [4]int{seen[l.CustomerAddr4(1)], seen[netlab.UplinkAddr6(1)], seen[l.CustomerAddr4(2)], seen[netlab.UplinkAddr6(2)]}
}

// allUp checks that every uplink and family is up with no probe lost.
func allUp(s core.Status) string {
	var bad []string
	for _, u := range s.Uplinks {
		for _, f := range []struct {
			name       string
			state      string
			loss, rttm float64
		}{{"IPv4", u.IPv4.State, u.IPv4.Loss, u.IPv4.RTTms}, {"IPv6", u.IPv6.State, u.IPv6.Loss, u.IPv6.RTTms}} {
			if f.state != "up" || f.loss != 0 || f.rttm <= 0 {
				bad = append(bad, fmt.Sprintf("%s %s: %s, loss %v, rtt %v ms", u.Name, f.name, f.state, f.loss, f.rttm))
			}
		}
	}
	return strings.Join(bad, "; ")
}

// TestMetricsIdleConnectionsFromUser: an unprivileged user tries to hold
// 20,000 idle keep-alive connections to the metrics port, dialling again
// each one the server closes. The daemon holds at most MaxConns of them (the rest
// wait in the kernel's backlog or are refused there), so its open files
// stay bounded, its TCP probes (a socket every round) keep answering, no
// verdict changes and no uplink goes down, for rounds spanning several
// header timeouts. Scrapes are not promised during the attack (a local
// user can always crowd the port); once it ends they are answered again.
func TestMetricsIdleConnectionsFromUser(t *testing.T) {
	const conns, helpers = 20_000, 2 // a helper keeps 10,000 under the 20,000 files a process may open here
	const rounds = 24                // 12 s of 500 ms rounds: more than two header timeouts
	l := newLab(t, 2)
	d := startWanpin(t, l, tcpHealth, "--metrics-listen", "127.0.0.1:9469", "--log-level", "debug")
	pid := d.proc.Pid()
	var before core.Status
	waitUntil(t, 10*time.Second, "every uplink and family up with answered probes", func() (bool, string) {
		before = statusOf(t, d)
		bad := allUp(before)
		return bad == "", bad
	})
	scrape := func(timeout string) error {
		_, err := l.Exec(l.Router, "curl", "-sSf", "-o", "/dev/null", "-m", timeout, "http://127.0.0.1:9469/metrics")
		return err
	}
	if err := scrape("5"); err != nil {
		t.Fatalf("scrape before the attack: %v", err)
	}
	verdicts := strings.Count(d.log(), "health verdict")
	baseFDs := openFiles(pid)
	cpu0 := procCPU(t, pid)

	// The daemon's open files, sampled all along.
	var mostFDs atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(openFiles(pid)); n > mostFDs.Load() {
				mostFDs.Store(n)
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	attackStart := time.Now()
	var hs []*helper
	for range helpers {
		hs = append(hs, startHelper(t, l, attackerUID, "hold", fmt.Sprintf("HOLD_N=%d", conns/helpers), "HOLD_ADDR=127.0.0.1:9469"))
	}
	sum := func(key string) int {
		n := 0
		for _, h := range hs {
			n += h.get(key)
		}
		return n
	}
	report := func() string {
		return fmt.Sprintf("open %d, dials %d (failed %d), closed by the server %d", sum("open"), sum("dials"), sum("failed"), sum("closed"))
	}
	// Every one of the 20,000 has been tried...
	waitUntil(t, 60*time.Second, fmt.Sprintf("%d connection attempts", conns), func() (bool, string) {
		return sum("dials") >= conns, report()
	})
	t.Logf("after %v: %s", time.Since(attackStart).Round(time.Millisecond), report())
	// ... and held for rounds of every uplink and family, while the server
	// closes idle ones and the helpers dial them again.
	from := probeRounds(l)
	waitUntil(t, 60*time.Second, fmt.Sprintf("%d probe rounds of every uplink and family under attack", rounds), func() (bool, string) {
		now := probeRounds(l)
		for i := range now {
			if now[i]-from[i] < rounds {
				return false, fmt.Sprintf("rounds %v since %v; %s", now, from, report())
			}
		}
		return sum("closed") > 0, fmt.Sprintf("rounds %v since %v; %s", now, from, report())
	})
	during := scrape("3")
	under := statusOf(t, d)
	held := time.Since(attackStart)
	attackCPU := procCPU(t, pid) - cpu0
	t.Logf("held for %v: %s; the daemon's open files: %d before, at most %d during; its CPU %v; a scrape during the attack: %v",
		held.Round(time.Millisecond), report(), baseFDs, mostFDs.Load(), attackCPU, during)

	for _, h := range hs {
		h.stop(t)
	}
	released := time.Now()
	waitUntil(t, 30*time.Second, "a scrape answered after the attack", func() (bool, string) {
		err := scrape("2")
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("scrape answered %v after the attackers let go", time.Since(released).Round(time.Millisecond))
	close(stopSampling)
	<-sampled

	if bad := allUp(under); bad != "" {
		t.Errorf("under attack: %s", bad)
	}
	for i, u := range under.Uplinks {
		if u.Transitions != before.Uplinks[i].Transitions {
			t.Errorf("%s: %d transitions before the attack, %d after", u.Name, before.Uplinks[i].Transitions, u.Transitions)
		}
	}
	log := d.log()
	if n := strings.Count(log, "health verdict"); n != verdicts {
		t.Errorf("%d health verdicts during the attack", n-verdicts)
	}
	for _, bad := range []string{"uplink down", "too many open files", "conntrack flushed"} {
		if strings.Contains(log, bad) {
			t.Errorf("%q in the log", bad)
		}
	}
	// The listener, MaxConns connections and a few of the Go runtime's
	// and the probes' own.
	if limit := int64(baseFDs + 32 + 8); mostFDs.Load() > limit {
		t.Errorf("the daemon held %d files (%d before the attack), want at most %d", mostFDs.Load(), baseFDs, limit)
	}
}

// TestMetricsPublicBindNeedsFlag: an address other machines can reach
// (every address, the router's WAN address) or a name is a start error
// without --metrics-public: `wanpin run` exits 2 at once saying why, and
// has installed nothing. With the flag, the WAN address serves the
// metrics to the ISP's side, and nothing else listens. A second daemon
// on the same address hears of the first, not of the port.
func TestMetricsPublicBindNeedsFlag(t *testing.T) {
	l := newLab(t, 2)
	cfg := fmt.Sprintf(twoUplinks, 1, 1)
	wan1 := netlab.UplinkAddr4(1) + ":9469"
	d := newDaemon(t, l, cfg)
	runOnce := func(args ...string) (string, int, time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		full := append([]string{"--net=/run/netns/" + l.Router, "--", "env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr,
			wanpinBin, "run", "--config", d.cfgPath}, args...)
		start := time.Now()
		out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
		took := time.Since(start)
		if ctx.Err() != nil {
			t.Fatalf("wanpin run %v did not exit:\n%s", args, out)
		}
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code, took
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--metrics-listen", ":9469"}, `":9469" binds every address, the uplinks' included`},
		{[]string{"--metrics-listen", "0.0.0.0:9469"}, "binds every address"},
		{[]string{"--metrics-listen", "[::]:9469"}, "binds every address"},
		{[]string{"--metrics-listen", wan1}, `"198.51.100.2:9469" is not loopback: other machines could connect; use 127.0.0.1:9469, or add --metrics-public`},
		{[]string{"--metrics-listen", "0:9469"}, `"0" is not a numeric address`},
		{[]string{"--metrics-listen", "localhost:9469", "--metrics-public"}, "not a numeric address"},
		{[]string{"--metrics-public"}, "--metrics-public needs --metrics-listen"},
	} {
		out, code, took := runOnce(c.args...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("wanpin run %v: exit %d, %q; want 2 and %q", c.args, code, out, c.want)
		}
		t.Logf("wanpin run %v: exit %d in %v: %s", c.args, code, took.Round(time.Millisecond), strings.TrimSpace(out))
	}
	// Refused before anything was installed.
	if tables := run(t, l, l.Router, "nft", "list", "tables"); strings.Contains(tables, "wanpin") {
		t.Errorf("a refused start left nftables tables:\n%s", tables)
	}
	if rules := run(t, l, l.Router, "ip", "rule", "show"); strings.Contains(rules, "fwmark") {
		t.Errorf("a refused start left rules:\n%s", rules)
	}

	// Asked for: the WAN address, reached from the ISP's side.
	p := startWanpin(t, l, cfg, "--metrics-listen", wan1, "--metrics-public")
	if !strings.Contains(p.log(), `msg="metrics on an address other machines can reach: keep it behind a firewall" address=`+wan1) {
		t.Errorf("no warning for the public address:\n%s", p.log())
	}
	out := run(t, l, l.ISP(1), "curl", "-sSf", "-m", "5", "http://"+wan1+"/metrics")
	if !strings.Contains(out, `wanpin_uplink_up{interface="wan1",uplink="isp1"} 1`) {
		t.Errorf("metrics from the ISP's side:\n%s", out)
	}
	if ss := run(t, l, l.Router, "ss", "-Hltn", "sport = :9469"); strings.Count(ss, "LISTEN") != 1 || !strings.Contains(ss, wan1) {
		t.Errorf("listening on 9469: %q, want %s alone", ss, wan1)
	}
	// A second daemon with the same address is told which process runs,
	// not that the port is taken: the address is bound after the
	// namespace's instance lock is held.
	out, code, _ := runOnce("--metrics-listen", wan1, "--metrics-public")
	if code == 0 || !strings.Contains(out, fmt.Sprintf("another wanpin (pid %d) already runs", p.proc.Pid())) {
		t.Errorf("a second daemon on the same metrics address: exit %d, %q", code, out)
	}
}

// TestExplainLimitedPerUser: with 10,000 policies of two keys each (a
// rule each: what makes an evaluation cost), an unprivileged user calling
// Explain in a loop gets a burst, then ten a second, and the others are
// refused at once: the daemon's CPU stays bounded however fast it calls.
// Root is not limited meanwhile.
func TestExplainLimitedPerUser(t *testing.T) {
	const policies, calls = 10_000, 2_000
	var cfg strings.Builder
	cfg.WriteString(fmt.Sprintf(twoUplinks, 1, 1))
	for i := range policies {
		fmt.Fprintf(&cfg, "\n[[policy]]\nname = \"p%d\"\ndestinations = [\"100.%d.%d.0/24\"]\nprotocol = \"tcp\"\nports = [\"443\"]\nuplinks = [\"isp%d\"]\n",
			i, 64+i/256, i%256, 1+i%2)
	}
	l := newLab(t, 2)
	d := newDaemon(t, l, cfg.String())
	d.start()
	pid := d.proc.Pid()
	// The first Explain compiles the policies; the calls below are
	// evaluations.
	if out, code := d.cli(0, "explain", "--dst", "203.0.113.10", "--dport", "443"); code != 0 {
		t.Fatalf("root's explain: %d %s", code, out)
	}
	cpu0, wall0 := procCPU(t, pid), time.Now()
	h := startHelper(t, l, busUserUID, "calls", "DBUS_SYSTEM_BUS_ADDRESS="+d.busAddr, "CALL=explain", fmt.Sprintf("CALL_N=%d", calls))
	waitUntil(t, 60*time.Second, "the unprivileged Explain calls", func() (bool, string) {
		return h.get("done") == 1, strings.Join(h.lines, "; ")
	})
	took := time.Duration(h.get("took_us")) * time.Microsecond
	cpu, wall := procCPU(t, pid)-cpu0, time.Since(wall0)
	answered, limited := h.get("answered"), h.get("limited")
	t.Logf("%d unprivileged Explain calls at %d policies in %v: %d answered, %d refused for the rate; daemon CPU %v over %v (%v a call)",
		calls, policies, took.Round(time.Millisecond), answered, limited, cpu, wall.Round(time.Millisecond), cpu/calls)
	if h.get("failed") != 0 || answered+limited != calls {
		t.Errorf("calls failed: %s", strings.Join(h.lines, "; "))
	}
	if most := bus.ExplainBurst + int(took.Seconds()*bus.ExplainRate) + 1; answered > most || answered < bus.ExplainBurst {
		t.Errorf("%d answered in %v, want %d..%d (a burst of %d, then %d a second)",
			answered, took, bus.ExplainBurst, most, bus.ExplainBurst, bus.ExplainRate)
	}
	if cpu >= 2*time.Second {
		t.Errorf("%d unprivileged Explain calls cost the daemon %v of CPU, want < 2s", calls, cpu)
	}
	// Root meanwhile: never limited.
	for i := range 3 * bus.ExplainBurst {
		if out, code := d.cli(0, "explain", "--dst", "203.0.113.10", "--dport", "443"); code != 0 {
			t.Fatalf("root's explain %d: %d %s", i+1, code, out)
		}
	}
	h.stop(t)
}
