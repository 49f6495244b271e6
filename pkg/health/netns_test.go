package health

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/inet"
)

// The lab: a router namespace with the uplink "wan1" (198.51.100.2/29,
// 2001:db8:1::2/64) and an ISP namespace at the other end of the veth
// (198.51.100.1, 2001:db8:1::1) that also holds the probe targets on its
// loopback (203.0.113.1, 2001:db8:2::1) with an HTTP server on port 80,
// port 81 closed, and a DNS server on port 53. The router's main table
// has no default route: only traffic marked labMark reaches the targets
// (table 100 via the ISP), so a probe that arrives proves its mark.
const (
	labMark = 0x10000
	labV4   = "203.0.113.1"
	labV6   = "2001:db8:2::1"
)

// testNS is a network namespace owned by one test, deleted when it ends.
type testNS struct {
	name string
	f    *os.File
}

func newNS(tb testing.TB, role string) *testNS {
	tb.Helper()
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	name := "wph-" + hex.EncodeToString(b) + "-" + role
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		tb.Fatalf("opening netns %s: %v", name, err)
	}
	tb.Cleanup(func() { f.Close() }) // runs before the deletion
	return &testNS{name: name, f: f}
}

// sh runs a shell script inside the namespace.
func (n *testNS) sh(tb testing.TB, script string) string {
	tb.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.name, "sh", "-ec", script).CombinedOutput()
	if err != nil {
		tb.Fatalf("in %s: %s: %v: %s", n.name, script, err, out)
	}
	return string(out)
}

// run runs f, which creates sockets, on a thread switched into the
// namespace; the sockets stay there whatever thread uses them later. Raw
// sockets in particular must be created inside the namespace they serve.
func (n *testNS) run(f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and dies with its goroutine rather than
		// run other goroutines in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

type lab struct {
	router, isp *testNS
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s", bin)
		}
	}
	l := &lab{router: newNS(t, "r"), isp: newNS(t, "p")}
	if out, err := exec.Command("ip", "-n", l.router.name, "link", "add", "wan1", "type", "veth",
		"peer", "name", "up0", "netns", l.isp.name).CombinedOutput(); err != nil {
		t.Fatalf("veth: %v: %s", err, out)
	}
	l.router.sh(t, fmt.Sprintf(`
ip link set lo up
ip link set wan1 up
ip addr add 198.51.100.2/29 dev wan1
ip -6 addr add 2001:db8:1::2/64 dev wan1 nodad
ip route add default via 198.51.100.1 dev wan1 table 100
ip -6 route add default via 2001:db8:1::1 dev wan1 table 100
ip rule add fwmark %#x/0xff0000 table 100 priority 100
ip -6 rule add fwmark %#x/0xff0000 table 100 priority 100
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.wan1.rp_filter=0
sysctl -qw net.ipv4.conf.all.src_valid_mark=1
`, labMark, labMark))
	// arp_ignore 1: like a real ISP's gateway, the ISP does not answer ARP
	// for the targets (on its loopback), so a probe without the mark,
	// which the kernel sends on-link for want of a gateway, goes nowhere.
	l.isp.sh(t, `
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.default.arp_ignore=1
ip link set lo up
ip link set up0 up
ip addr add 198.51.100.1/29 dev up0
ip addr add 203.0.113.1/32 dev lo
ip -6 addr add 2001:db8:1::1/64 dev up0 nodad
ip -6 addr add 2001:db8:2::1/128 dev lo nodad
`)
	l.serve(t)
	return l
}

// serve starts the ISP side's servers: HTTP on port 80 (/ answers 204,
// /fail 503) and DNS on port 53, on both target addresses.
func (l *lab) serve(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	for _, host := range []string{labV4, "[" + labV6 + "]"} {
		var ln net.Listener
		var pc net.PacketConn
		err := l.isp.run(func() error {
			var err error
			if ln, err = net.Listen("tcp", host+":80"); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp", host+":53")
			return err
		})
		if err != nil {
			t.Fatalf("servers in the ISP namespace: %v", err)
		}
		// A probe's connection whose FIN the blackhole dropped would keep
		// its server goroutine reading forever and fail the goroutine
		// count at the end (seen once in CI): the server lets go.
		srv := &http.Server{Handler: mux, ReadTimeout: time.Second, IdleTimeout: time.Second}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		dnsDone := make(chan struct{})
		go func() { defer close(dnsDone); serveDNS(pc) }()
		t.Cleanup(func() {
			srv.Close()
			pc.Close()
			<-done
			<-dnsDone
		})
	}
}

// serveDNS answers every query with NOERROR and no records.
func serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired})
		_ = b.StartQuestions()
		_ = b.Question(q)
		if msg, err := b.Finish(); err == nil {
			_, _ = pc.WriteTo(msg, from)
		}
	}
}

func (l *lab) spec(method string, targets ...string) Spec {
	cfg := defaults()
	cfg.Method, cfg.Targets, cfg.DNSName = method, config.MustTargets(method, targets...), "."
	return Spec{Uplink: "isp1", Interface: "wan1", Mark: labMark, Config: cfg}
}

// start runs a monitor whose sockets are created in the router namespace.
func (l *lab) start(ctx context.Context, spec Spec, events chan<- Event) *Monitor {
	ps := newProbeSet(spec, l.router.run)
	return start(ctx, spec, ps.targets(), ps, events, nil)
}

var labSpecs = []struct {
	method  string
	targets []string
}{
	{"icmp", []string{labV4, labV6}},
	// Port 81 is closed: the RST counts as an answer.
	{"tcp", []string{labV4 + ":80", labV4 + ":81", "[" + labV6 + "]:80"}},
	{"http", []string{"http://" + labV4 + "/", "http://[" + labV6 + "]/"}},
	{"dns", []string{labV4, "[" + labV6 + "]:53"}},
}

// Each method reaches its targets through the marked uplink; the same
// probes without the mark find no route.
func TestProbesThroughUplink(t *testing.T) {
	l := newLab(t)
	l.router.sh(t, fmt.Sprintf(`nft -f - <<'EOF'
table inet wphc {
	chain out {
		type filter hook output priority 0;
		meta mark %#x ip daddr %[2]s counter comment "marked"
		meta mark %#[1]x ip6 daddr %[3]s counter comment "marked6"
		meta mark != %#[1]x ip daddr %[2]s counter comment "unmarked"
		meta mark != %#[1]x ip6 daddr %[3]s counter comment "unmarked6"
	}
}
EOF`, labMark, labV4, labV6))
	for _, c := range labSpecs {
		ps := newProbeSet(l.spec(c.method, c.targets...), l.router.run)
		for _, target := range ps.targets() {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			rtt, err := target.Probe(ctx)
			cancel()
			if err != nil || rtt <= 0 {
				t.Errorf("%s %s: rtt %v, %v", c.method, target.Name, rtt, err)
			} else {
				t.Logf("%s %s: %v", c.method, target.Name, rtt)
			}
		}
		if c.method == "icmp" {
			checkSocketOptions(t, ps)
		}
		ps.close()
	}
	counts := l.counters(t, "wphc", "out")
	if counts["marked"] == 0 || counts["marked6"] == 0 {
		t.Errorf("no marked probe left the router: %v", counts)
	}
	if counts["unmarked"] != 0 || counts["unmarked6"] != 0 {
		t.Errorf("probes left without the mark: %v", counts)
	}

	// Without the mark the main table has no way there.
	for _, c := range labSpecs {
		spec := l.spec(c.method, c.targets...)
		spec.Mark = 0
		ps := newProbeSet(spec, l.router.run)
		for _, target := range ps.targets() {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			_, err := target.Probe(ctx)
			cancel()
			if err == nil {
				t.Errorf("%s %s answered without the mark", c.method, target.Name)
			} else {
				t.Logf("%s %s without the mark: %s", c.method, target.Name, shortErr(err))
			}
		}
		ps.close()
	}
}

// checkSocketOptions reads SO_MARK and SO_BINDTODEVICE back from the
// shared ICMP sockets.
func checkSocketOptions(t *testing.T, ps *probeSet) {
	t.Helper()
	if len(ps.pingers) != 2 {
		t.Fatalf("%d ICMP sockets, want one per family", len(ps.pingers))
	}
	for _, p := range ps.pingers {
		p.mu.Lock()
		c := p.conn
		p.mu.Unlock()
		if c == nil {
			t.Fatalf("%v: no socket", p.fam)
		}
		rc, err := c.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var mark int
		var dev string
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			if mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK); gerr != nil {
				return
			}
			dev, gerr = unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
		}); err != nil || gerr != nil {
			t.Fatalf("getsockopt: %v %v", err, gerr)
		}
		if mark != labMark || dev != "wan1" {
			t.Errorf("%v: SO_MARK %#x SO_BINDTODEVICE %q, want %#x wan1", p.fam, mark, dev, labMark)
		}
		// The ICMP filter lets only what can answer an echo through.
		if p.fam == inet.IPv4 {
			f, err := ipv4.NewPacketConn(c).ICMPFilter()
			if err != nil || !f.WillBlock(ipv4.ICMPTypeEcho) || f.WillBlock(ipv4.ICMPTypeEchoReply) {
				t.Errorf("v4 ICMP filter: %v", err)
			}
		} else {
			f, err := ipv6.NewPacketConn(c).ICMPFilter()
			if err != nil || !f.WillBlock(ipv6.ICMPTypeNeighborSolicitation) || f.WillBlock(ipv6.ICMPTypeEchoReply) {
				t.Errorf("v6 ICMP filter: %v", err)
			}
		}
	}
}

var counterLine = regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "(\w+)"`)

// counters reads the named rule counters of a chain.
func (l *lab) counters(t *testing.T, table, chain string) map[string]int {
	out := l.router.sh(t, "nft list chain inet "+table+" "+chain)
	counts := map[string]int{}
	for _, m := range counterLine.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		counts[m[2]] = n
	}
	return counts
}

func TestProbeFailures(t *testing.T) {
	l := newLab(t)
	for _, c := range []struct {
		name string
		spec Spec
		want string
	}{
		{"http 503", l.spec("http", "http://"+labV4+"/fail"), "HTTP 503"},
		{"no such interface", func() Spec {
			s := l.spec("icmp", labV4)
			s.Interface = "wan9"
			return s
		}(), "SO_BINDTODEVICE wan9: no such device"},
		{"source not on the router", func() Spec {
			s := l.spec("tcp", labV4+":80")
			s.Source = netip.MustParseAddr("192.0.2.1")
			return s
		}(), "cannot assign requested address"},
		{"dns port closed", l.spec("dns", labV4+":5353"), "connection refused"},
		{"tcp port filtered", l.spec("tcp", "198.51.100.3:80"), "timeout"},
	} {
		ps := newProbeSet(c.spec, l.router.run)
		ctx, cancel := context.WithTimeout(t.Context(), 400*time.Millisecond)
		_, err := ps.targets()[0].Probe(ctx)
		cancel()
		ps.close()
		if err == nil || !strings.Contains(shortErr(err), c.want) {
			t.Errorf("%s: %v (short %q), want %q", c.name, err, shortErr(err), c.want)
		}
	}
	// A source address of the uplink is used.
	spec := l.spec("icmp", labV4)
	spec.Source = netip.MustParseAddr("198.51.100.2")
	ps := newProbeSet(spec, l.router.run)
	defer ps.close()
	if _, err := ps.targets()[0].Probe(t.Context()); err != nil {
		t.Errorf("icmp from 198.51.100.2: %v", err)
	}
}

// The ISP starts dropping everything silently: every method's monitor
// notices within the worst case of the defaults, and comes back after
// up_after good rounds and the hold-down once the ISP forwards again.
// The figures are logged: this is the detection-time measurement.
func TestBlackholeDetectedAndRecovered(t *testing.T) {
	l := newLab(t)
	cfg := defaults()
	worst := cfg.Interval + cfg.Interval*time.Duration(cfg.DownAfter-1) + cfg.Timeout
	best := cfg.Interval*time.Duration(cfg.DownAfter-1) + cfg.Timeout
	const slack = 600 * time.Millisecond // scheduling on a loaded test machine

	goroutines := runtime.NumGoroutine()
	fds := openFDs(t)
	events := make(chan Event, 16)
	var monitors []*Monitor
	for _, c := range labSpecs {
		spec := l.spec(c.method, c.targets...)
		spec.Uplink = c.method
		monitors = append(monitors, l.start(t.Context(), spec, events))
	}
	collect := func(what string, within time.Duration) map[string]Event {
		got := map[string]Event{}
		deadline := time.After(within)
		for len(got) < len(labSpecs) {
			select {
			case ev := <-events:
				if _, dup := got[ev.Uplink]; dup {
					t.Errorf("%s: second event for %s: %+v", what, ev.Uplink, ev)
				}
				got[ev.Uplink] = ev
			case <-deadline:
				t.Fatalf("%s: events within %v: %+v", what, within, got)
			}
		}
		return got
	}
	for m, ev := range collect("first verdict", 3*time.Second) {
		if !ev.Healthy || ev.RTT <= 0 || ev.Loss != 0 {
			t.Errorf("%s: first verdict %+v", m, ev)
		}
	}

	// The ISP dies at a random moment of the round cycle.
	time.Sleep(rand.N(cfg.Interval))
	// The drop takes effect somewhere while the nft command runs, which
	// on a loaded machine can take a while: bound the moment on both
	// sides rather than guess it.
	deadFrom := time.Now()
	l.isp.sh(t, `nft add table inet wphdrop
nft add chain inet wphdrop in '{ type filter hook input priority 0; }'
nft add rule inet wphdrop in iifname up0 drop`)
	deadBy := time.Now()
	for m, ev := range collect("blackhole", worst+slack+time.Second+deadBy.Sub(deadFrom)) {
		t.Logf("%s: down %v to %v after the drop (worst case %v): %s", m, ev.At.Sub(deadBy).Round(time.Millisecond),
			ev.At.Sub(deadFrom).Round(time.Millisecond), worst, ev.Reason)
		if ev.Healthy || !strings.HasPrefix(ev.Reason, "2 rounds lost: ") || !strings.Contains(ev.Reason, "timeout") {
			t.Errorf("%s: %+v", m, ev)
		}
		// Latest possible drop deadBy: no earlier than best after it;
		// earliest possible drop deadFrom: no later than worst after it.
		if ev.At.Sub(deadFrom) > worst+slack || ev.At.Sub(deadBy) < best-100*time.Millisecond {
			t.Errorf("%s: down %v..%v after the drop, want %v..%v", m, ev.At.Sub(deadBy), ev.At.Sub(deadFrom), best, worst)
		}
	}
	for _, m := range monitors {
		if rtt, loss := m.Stats(); rtt != 0 || loss <= 0 {
			t.Errorf("stats while blackholed: %v %v", rtt, loss)
		}
	}

	// As with the drop: the ISP forwards again somewhere while the nft
	// command runs (seen in CI: "up after 1.97s" counted from after it).
	aliveFrom := time.Now()
	l.isp.sh(t, "nft delete table inet wphdrop")
	aliveBy := time.Now()
	upWorst := cfg.Interval + cfg.HoldDown + cfg.Timeout
	for m, ev := range collect("recovery", upWorst+slack+time.Second+aliveBy.Sub(aliveFrom)) {
		t.Logf("%s: up %v to %v after the ISP forwarded again (hold-down %v): %s", m, ev.At.Sub(aliveBy).Round(time.Millisecond),
			ev.At.Sub(aliveFrom).Round(time.Millisecond), cfg.HoldDown, ev.Reason)
		if !ev.Healthy || !strings.Contains(ev.Reason, "rounds good, held down 2s") {
			t.Errorf("%s: %+v", m, ev)
		}
		// The first good round starts after the earliest moment the ISP
		// forwarded again, the hold-down after it; the latest moment
		// bounds the worst case.
		if ev.At.Sub(aliveFrom) < cfg.HoldDown || ev.At.Sub(aliveBy) > upWorst+slack {
			t.Errorf("%s: up %v..%v after the ISP forwarded again, want %v..%v", m, ev.At.Sub(aliveBy), ev.At.Sub(aliveFrom), cfg.HoldDown, upWorst)
		}
	}

	var wg sync.WaitGroup
	for _, m := range monitors {
		wg.Go(m.Stop)
	}
	wg.Wait()
	checkGoroutines(t, goroutines)
	checkFDs(t, fds)
}

// checkFDs waits up to three seconds for the number of open descriptors
// to be back at before. The lab's servers live in this process: the
// ISP's side of a probe connection closes when the client's FIN arrives
// or, for one whose FIN the blackhole ate, at the server's one-second
// timeouts, after the probes themselves are gone (seen in CI: "1 file
// descriptors left open").
func checkFDs(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := openFDs(t)
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			var open []string
			entries, _ := os.ReadDir("/proc/self/fd")
			for _, e := range entries {
				if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
					open = append(open, e.Name()+" -> "+target)
				}
			}
			t.Fatalf("%d file descriptors left open (%d before): %s", n-before, before, strings.Join(open, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGoroutines waits up to two seconds for the goroutine count to be
// back at before (runtime bookkeeping may take a moment).
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left over (%d before):\n%s", n-before, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// A monitor whose interface does not exist yet keeps trying: once it
// appears (pppN comes and goes), the probes work without a restart.
func TestInterfaceAppearsLater(t *testing.T) {
	l := newLab(t)
	l.router.sh(t, "ip link set wan1 down; ip link set wan1 name wanX")
	events := make(chan Event, 4)
	m := l.start(t.Context(), l.spec("icmp", labV4, labV6), events)
	defer m.Stop()
	ev := waitEvent(t, events, 3*time.Second)
	if ev.Healthy || !strings.Contains(ev.Reason, "SO_BINDTODEVICE wan1: no such device") {
		t.Fatalf("without the interface: %+v", ev)
	}
	// Down and up lose the routes and the IPv6 address, as a new pppN
	// starts without them.
	l.router.sh(t, `ip link set wanX name wan1
ip link set wan1 up
ip -6 addr replace 2001:db8:1::2/64 dev wan1 nodad
ip route replace default via 198.51.100.1 dev wan1 table 100
ip -6 route replace default via 2001:db8:1::1 dev wan1 table 100`)
	if ev := waitEvent(t, events, 10*time.Second); !ev.Healthy {
		t.Fatalf("after the interface came: %+v", ev)
	}
}
