package dnslearn

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/nstest"
	"golang.org/x/sys/unix"
)

// The lab: a LAN host (client), the router, and an upstream DNS server.
//
//	client eth0 192.0.2.2/24 2001:db8:1::2/64
//	  |
//	router lan 192.0.2.1/24 2001:db8:1::1/64, wan 198.51.100.1/24 2001:db8:2::1/64
//	  |      (forwards; masquerades IPv4 from the LAN; routes IPv6 as is)
//	server eth0 198.51.100.2/24 2001:db8:2::2/64 (+ .3 and ::3 for hand-made packets)
const (
	clientAddr4 = "192.0.2.2"
	clientAddr6 = "2001:db8:1::2"
	routerLAN4  = "192.0.2.1"
	routerLAN6  = "2001:db8:1::1"
	routerWAN4  = "198.51.100.1"
	serverAddr4 = "198.51.100.2"
	serverAlt4  = "198.51.100.3"
	serverAddr6 = "2001:db8:2::2"
	serverAlt6  = "2001:db8:2::3"

	labGroup = 7
	labMark  = 0xd5
	// Answers to this client port are not held: the latency test's
	// "without" path. Below the ephemeral range, so dig never uses it.
	unheldPort = 31000
)

// The router's table: the hold rules the daemon would write, a counter of
// re-injected packets, a stateful firewall of the kind most routers have
// (what is not established is dropped, unless from the LAN), and IPv4
// masquerade.
var labRules = fmt.Sprintf(`table inet wpdl {
	chain held {
		log prefix "%[1]s" group %[4]d snaplen 65535 drop
	}
	chain copied {
		log prefix "%[2]s" group %[4]d snaplen 65535
	}
	chain answer_in {
		ct status snat goto held
		fib daddr type != local goto held
		goto copied
	}
	chain dns_hold {
		type filter hook prerouting priority mangle - 10; policy accept;
		iifname "wan" udp sport 53 udp dport != %[3]d goto answer_in
		iifname "wan" tcp sport 53 goto copied
	}
	chain dns_hold_out {
		type filter hook output priority raw; policy accept;
		oifname != "wan" udp sport 53 meta mark != %[5]d goto held
	}
	chain reinject {
		type filter hook output priority raw; policy accept;
		meta mark %[5]d counter
	}
	chain fw_in {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iifname "lan" accept
		meta l4proto ipv6-icmp accept
		counter
	}
	chain fw_fwd {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "lan" accept
		meta l4proto ipv6-icmp accept
		counter
	}
	chain nat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" ip saddr 192.0.2.0/24 masquerade
	}
}
`, PrefixHold, PrefixCopy, unheldPort, labGroup, labMark)

type lab struct {
	client, router, server *nstest.NS
	dir                    string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	for _, tool := range []string{"nft", "dnsmasq", "dig", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	l := &lab{
		client: nstest.New(t, "wpdl"),
		router: nstest.New(t, "wpdl"),
		server: nstest.New(t, "wpdl"),
		dir:    t.TempDir(),
	}
	// veths are made inside the router's namespace, never in the machine's.
	l.router.Run(t, "ip", "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", l.client.Name)
	l.router.Run(t, "ip", "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", l.server.Name)
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "addr", "add", routerLAN4 + "/24", "dev", "lan"},
		{"ip", "addr", "add", routerLAN6 + "/64", "dev", "lan", "nodad"},
		{"ip", "addr", "add", routerWAN4 + "/24", "dev", "wan"},
		{"ip", "addr", "add", "2001:db8:2::1/64", "dev", "wan", "nodad"},
		{"ip", "link", "set", "lan", "up"},
		{"ip", "link", "set", "wan", "up"},
	} {
		l.router.Run(t, c...)
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", clientAddr4 + "/24", "dev", "eth0"},
		{"ip", "addr", "add", clientAddr6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", routerLAN4},
		{"ip", "-6", "route", "add", "default", "via", routerLAN6},
	} {
		l.client.Run(t, c...)
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", serverAddr4 + "/24", "dev", "eth0"},
		{"ip", "addr", "add", serverAlt4 + "/24", "dev", "eth0"},
		{"ip", "addr", "add", serverAddr6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "addr", "add", serverAlt6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "link", "set", "eth0", "up"},
		// The LAN is reached through the router without NAT for hand-made
		// packets and for IPv6.
		{"ip", "route", "add", "192.0.2.0/24", "via", routerWAN4},
		{"ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1"},
	} {
		l.server.Run(t, c...)
	}
	rules := filepath.Join(l.dir, "rules.nft")
	if err := os.WriteFile(rules, []byte(labRules), 0o644); err != nil {
		t.Fatal(err)
	}
	l.router.Run(t, "nft", "-f", rules)

	// The upstream server.
	args := []string{"--listen-address=" + serverAddr4 + "," + serverAddr6,
		"--edns-packet-max=4096",
		"--address=/example.com/203.0.113.10",
		"--address=/example.com/2001:db8:10::10",
		"--cname=www.example.org,real.example.net",
		"--host-record=real.example.net,203.0.113.20,2001:db8:20::20",
		"--host-record=other.example.org,203.0.113.30,2001:db8:30::30",
	}
	for i := 1; i <= 120; i++ { // about 2 kB (A) and 3.4 kB (AAAA) of answer: fragmented on a 1500 byte path
		args = append(args, fmt.Sprintf("--host-record=big.example.net,203.0.113.%d,2001:db8:40::%x", i, i))
	}
	l.dnsmasq(t, l.server, "server", serverAddr4, args...)
	return l
}

// dnsmasq runs dnsmasq in ns, as internal/netlab runs its resolvers, and
// waits until it listens on addr.
func (l *lab) dnsmasq(t *testing.T, ns *nstest.NS, name, addr string, extra ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(l.dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"netns", "exec", ns.Name,
		"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--user=root", "--group=root",
		"--no-resolv", "--no-hosts", "--no-poll", "--port=53", "--bind-interfaces",
		"--pid-file=" + filepath.Join(l.dir, name+".pid"),
		"--log-queries=extra", "--log-facility=-"}, extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// ip netns exec execs dnsmasq: it dies with the test even if the test
	// process crashes before its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s's log:\n%s", name, b)
		}
	})
	for i := 0; ; i++ {
		out, _ := ns.Try("ss", "-Hlun", "sport = :53")
		if strings.Contains(out, addr+":53") {
			return
		}
		if i == 100 {
			t.Fatalf("%s does not listen on %s:53: %s", name, addr, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// recorder is the Listener's Handle: it keeps what was learned and can
// hold the Listener inside the handler until released.
type recorder struct {
	mu      sync.Mutex
	learned []Learned
	gate    chan chan struct{} // when set, Handle sends a release channel and waits on it
	panics  bool               // when set, Handle panics
}

func (r *recorder) handle(ls []Learned) {
	r.mu.Lock()
	r.learned = append(r.learned, ls...)
	gate, panics := r.gate, r.panics
	r.mu.Unlock()
	if panics {
		panic("the handler failed")
	}
	if gate != nil {
		release := make(chan struct{})
		gate <- release
		<-release
	}
}

// take returns the addresses learned since the last take, as
// "domain name addr" strings, sorted.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, x := range r.learned {
		out = append(out, fmt.Sprintf("%s %s %s", x.Domain, x.Name, x.Addr))
	}
	r.learned = nil
	slices.Sort(out)
	return out
}

func (l *lab) listen(t *testing.T, rec *recorder, domains ...string) *Listener {
	t.Helper()
	m, err := NewMatcher(domains)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(Options{
		NetNSFD: int(l.router.Handle),
		Group:   labGroup,
		Mark:    labMark,
		Matcher: m,
		Handle:  rec.handle,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ln.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ln
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// dig asks server from the client and returns the answer's records as
// dig +short prints them, sorted.
func (l *lab) dig(t *testing.T, server, name string, args ...string) []string {
	t.Helper()
	out, err := l.client.Try(append([]string{"dig", "+time=3", "+tries=1", "+short", "@" + server, name}, args...)...)
	if err != nil {
		t.Fatalf("dig @%s %s %v: %v: %s", server, name, args, err, out)
	}
	lines := strings.Fields(out)
	slices.Sort(lines)
	return lines
}

// reinjectCounter is the number of packets with the re-injection mark the
// router's output saw.
func (l *lab) reinjectCounter(t *testing.T) uint64 {
	t.Helper()
	out := l.router.Run(t, "nft", "list", "chain", "inet", "wpdl", "reinject")
	f := strings.Fields(out[strings.Index(out, "counter packets"):])
	n, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		t.Fatalf("counter in %q: %v", out, err)
	}
	return n
}

func TestKernel(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	ln := l.listen(t, rec, "example.com", "example.net")

	// step checks what one query taught and how the counters moved.
	var stepCopied func(t *testing.T, f func(), wantLearned []string, held, copied uint64)
	step := func(t *testing.T, f func(), wantLearned []string, held uint64) {
		t.Helper()
		stepCopied(t, f, wantLearned, held, 0)
	}
	stepCopied = func(t *testing.T, f func(), wantLearned []string, held, copied uint64) {
		t.Helper()
		before, marked := settled(ln), l.reinjectCounter(t)
		f()
		// Copies are learned from while the answer goes on: wait for them
		// (Learned moves once the handler has returned).
		s := settled(ln)
		for i := 0; (s.Copied-before.Copied < copied || s.Learned-before.Learned < uint64(len(wantLearned))) && i < 200; i++ {
			time.Sleep(10 * time.Millisecond)
			s = settled(ln)
		}
		if got := rec.take(); !slices.Equal(got, wantLearned) {
			t.Errorf("learned %q, want %q", got, wantLearned)
		}
		if s.Held-before.Held != held || s.Reinjected-before.Reinjected != held || s.Copied-before.Copied != copied ||
			s.ReinjectErrors != 0 || s.Learned-before.Learned != uint64(len(wantLearned)) {
			t.Errorf("stats went from %+v to %+v; want %d held and re-injected, %d copied, %d learned", before, s, held, copied, len(wantLearned))
		}
		if got := l.reinjectCounter(t) - marked; got < held {
			t.Errorf("the router's output saw %d packets with mark %#x, want at least %d", got, labMark, held)
		}
	}

	t.Run("forwarded, learned before delivery", func(t *testing.T) {
		// The handler holds the Listener until the test has seen that
		// dig is still waiting: the answer cannot reach the client before
		// the handler returns.
		gate := make(chan chan struct{})
		rec.mu.Lock()
		rec.gate = gate
		rec.mu.Unlock()
		defer func() {
			rec.mu.Lock()
			rec.gate = nil
			rec.mu.Unlock()
		}()
		step(t, func() {
			type result struct {
				out string
				err error
			}
			done := make(chan result, 1)
			go func() {
				out, err := l.client.Try("dig", "+time=5", "+tries=1", "+short", "@"+serverAddr4, "www.example.com")
				done <- result{out, err}
			}()
			var release chan struct{}
			select {
			case release = <-gate:
			case r := <-done:
				t.Fatalf("dig returned before the handler ran: %v: %s", r.err, r.out)
			case <-time.After(5 * time.Second):
				t.Fatal("the handler was not called")
			}
			select {
			case r := <-done:
				close(release)
				t.Fatalf("dig returned while the handler was still running: %v: %s", r.err, r.out)
			case <-time.After(500 * time.Millisecond):
			}
			close(release)
			r := <-done
			if r.err != nil || strings.TrimSpace(r.out) != "203.0.113.10" {
				t.Fatalf("dig: %v: %q, want 203.0.113.10", r.err, r.out)
			}
		}, []string{"example.com www.example.com 203.0.113.10"}, 1)
	})

	t.Run("forwarded, CNAME into a domain", func(t *testing.T) {
		step(t, func() {
			if got := l.dig(t, serverAddr4, "www.example.org"); !slices.Equal(got, []string{"203.0.113.20", "real.example.net."}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.net www.example.org 203.0.113.20"}, 1)
	})

	// The upstream's answers to the router's own resolver (IPv4, and IPv6
	// for example.net) are copied, not held (a socket of the router may
	// be bound to the uplink's device: see below); the resolver's answer
	// to the LAN host is held in output, learned from and re-injected.
	t.Run("router's own resolver", func(t *testing.T) {
		l.dnsmasq(t, l.router, "forwarder", routerLAN4, "--listen-address="+routerLAN4+","+routerLAN6,
			"--server="+serverAddr4, "--server=/example.net/"+serverAddr6, "--cache-size=0")
		stepCopied(t, func() {
			if got := l.dig(t, routerLAN4, "a.b.example.com"); !slices.Equal(got, []string{"203.0.113.10"}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.com a.b.example.com 203.0.113.10", "example.com a.b.example.com 203.0.113.10"}, 1, 1)
		stepCopied(t, func() {
			if got := l.dig(t, routerLAN6, "real.example.net", "AAAA"); !slices.Equal(got, []string{"2001:db8:20::20"}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.net real.example.net 2001:db8:20::20", "example.net real.example.net 2001:db8:20::20"}, 1, 1)
	})

	// A socket of the router bound to the uplink's device (systemd-
	// resolved's per-link servers, dnsmasq's server=addr@wan, wanpin's DNS
	// probes) gets its answer: a re-injected one would come through lo,
	// which such a socket never sees.
	t.Run("router's socket bound to the uplink", func(t *testing.T) {
		stepCopied(t, func() {
			var fd int
			if err := inNetNS(int(l.router.Handle), func() (err error) {
				if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
				return unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "wan")
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3}); err != nil {
				t.Fatal(err)
			}
			q := msg(t, []string{"bound.example.com"}, nil, query)
			if err := unix.Sendto(fd, q, 0, &unix.SockaddrInet4{Port: 53, Addr: netip.MustParseAddr(serverAddr4).As4()}); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1500)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			for errors.Is(err, unix.EINTR) {
				n, _, err = unix.Recvfrom(fd, buf, 0)
			}
			if err != nil || n < 12 || buf[0] != q[0] || buf[1] != q[1] {
				t.Fatalf("the bound socket got no answer: %v (%d bytes)", err, n)
			}
		}, []string{"example.com bound.example.com 203.0.113.10"}, 0, 1)
	})

	t.Run("IPv6", func(t *testing.T) {
		step(t, func() {
			if got := l.dig(t, serverAddr6, "www.example.org", "AAAA"); !slices.Equal(got, []string{"2001:db8:20::20", "real.example.net."}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.net www.example.org 2001:db8:20::20"}, 1)
		step(t, func() {
			if got := l.dig(t, serverAddr6, "example.com", "A"); !slices.Equal(got, []string{"203.0.113.10"}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.com example.com 203.0.113.10"}, 1)
	})

	t.Run("not a domain: delivered, not learned", func(t *testing.T) {
		step(t, func() {
			if got := l.dig(t, serverAddr4, "other.example.org"); !slices.Equal(got, []string{"203.0.113.30"}) {
				t.Errorf("dig: %q", got)
			}
			if got := l.dig(t, serverAddr6, "other.example.org", "AAAA"); !slices.Equal(got, []string{"2001:db8:30::30"}) {
				t.Errorf("dig: %q", got)
			}
		}, nil, 2)
	})

	t.Run("TCP: copied and learned", func(t *testing.T) {
		before := settled(ln)
		if got := l.dig(t, serverAddr4, "tcp.example.com", "+tcp"); !slices.Equal(got, []string{"203.0.113.10"}) {
			t.Errorf("dig: %q", got)
		}
		if got, want := rec.take(), []string{"example.com tcp.example.com 203.0.113.10"}; !slices.Equal(got, want) {
			t.Errorf("learned %q, want %q", got, want)
		}
		// The SYN-ACK, the answer, the FIN...: copied, none held.
		if s := settled(ln); s.Copied-before.Copied < 2 || s.Held != before.Held || s.Learned-before.Learned != 1 {
			t.Errorf("stats went from %+v to %+v, want the answer and more segments copied, none held, one learned", before, s)
		}
	})

	t.Run("fragmented answer", func(t *testing.T) {
		var want []string
		for i := 1; i <= 120; i++ {
			want = append(want, fmt.Sprintf("example.net big.example.net 203.0.113.%d", i))
		}
		slices.Sort(want)
		before := settled(ln)
		got := l.dig(t, serverAddr4, "big.example.net", "+bufsize=4096", "+ignore")
		if len(got) != 120 {
			t.Errorf("dig got %d addresses, want 120", len(got))
		}
		if g := rec.take(); !slices.Equal(g, want) {
			t.Errorf("learned %d addresses, want 120: %q", len(g), g)
		}
		var want6 []string
		for i := 1; i <= 120; i++ {
			want6 = append(want6, fmt.Sprintf("example.net big.example.net 2001:db8:40::%x", i))
		}
		slices.Sort(want6)
		got = l.dig(t, serverAddr6, "big.example.net", "AAAA", "+bufsize=4096", "+ignore")
		if len(got) != 120 {
			t.Errorf("dig over IPv6 got %d addresses, want 120", len(got))
		}
		if g := rec.take(); !slices.Equal(g, want6) {
			t.Errorf("learned %d IPv6 addresses, want 120", len(g))
		}
		if s := settled(ln); s.Reinjected-before.Reinjected != 2 || s.ReinjectErrors != 0 {
			t.Errorf("stats went from %+v to %+v, want 2 more re-injected", before, s)
		}
	})

	t.Run("garbage from port 53: re-injected unchanged", func(t *testing.T) {
		for _, v6 := range []bool{false, true} {
			src, dst := serverAlt4, clientAddr4
			if v6 {
				src, dst = serverAlt6, clientAddr6
			}
			// A response header announcing 65535 questions, then no question.
			payload := []byte("\x00\x01\x80\x00\xff\xff\x00\x00\x00\x00\x00\x00not DNS at all \xff\xfe")
			before := settled(ln)
			var got []byte
			step(t, func() {
				got = l.udpExchange(t, src, dst, payload)
			}, nil, 1)
			if !bytes.Equal(got, payload) {
				t.Errorf("the client got %q, want %q", got, payload)
			}
			if s := settled(ln); s.ParseErrors-before.ParseErrors != 1 {
				t.Errorf("parse errors went from %d to %d, want one more", before.ParseErrors, s.ParseErrors)
			}
		}
	})

	t.Run("a panicking handler", func(t *testing.T) {
		rec.mu.Lock()
		rec.panics = true
		rec.mu.Unlock()
		defer func() {
			rec.mu.Lock()
			rec.panics = false
			rec.mu.Unlock()
		}()
		step(t, func() {
			if got := l.dig(t, serverAddr4, "example.com"); !slices.Equal(got, []string{"203.0.113.10"}) {
				t.Errorf("dig: %q", got)
			}
		}, []string{"example.com example.com 203.0.113.10"}, 1)
	})

	t.Run("SetMatcher", func(t *testing.T) {
		m, _ := NewMatcher([]string{"example.org"})
		ln.SetMatcher(m)
		step(t, func() { l.dig(t, serverAddr4, "other.example.org") }, []string{"example.org other.example.org 203.0.113.30"}, 1)
		step(t, func() { l.dig(t, serverAddr4, "example.com") }, nil, 1)
	})
}

// settled returns ln's stats once every held packet is accounted for: the
// client may have its answer a moment before the Listener counts it sent.
func settled(ln *Listener) Stats {
	for i := 0; ; i++ {
		s := ln.Stats()
		if s.Reinjected+s.ReinjectErrors == s.Held || i == 200 {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// udpExchange sends payload from src port 53 in the server's namespace to
// dst port 40053 in the client's, and returns what the client received.
func (l *lab) udpExchange(t *testing.T, src, dst string, payload []byte) []byte {
	t.Helper()
	family := unix.AF_INET
	if strings.Contains(dst, ":") {
		family = unix.AF_INET6
	}
	sockaddr := func(a string, port int) unix.Sockaddr {
		ip := netip.MustParseAddr(a)
		if ip.Is4() {
			return &unix.SockaddrInet4{Port: port, Addr: ip.As4()}
		}
		return &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
	}
	var rx, tx int
	if err := inNetNS(int(l.client.Handle), func() (err error) {
		if rx, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.Bind(rx, sockaddr(dst, 40053))
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rx)
	if err := inNetNS(int(l.server.Handle), func() (err error) {
		if tx, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.Bind(tx, sockaddr(src, 53))
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tx)
	if err := unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(tx, payload, 0, sockaddr(dst, 40053)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, from, err := unix.Recvfrom(rx, buf, 0)
	for errors.Is(err, unix.EINTR) {
		n, from, err = unix.Recvfrom(rx, buf, 0)
	}
	if err != nil {
		t.Fatalf("the client got nothing: %v", err)
	}
	if got := sockaddrString(from); got != netip.AddrPortFrom(netip.MustParseAddr(src), 53).String() {
		t.Errorf("from %s, want %s port 53", got, src)
	}
	return buf[:n]
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprint(sa)
}

// TestReinjectLatency measures what holding and re-injecting adds to a DNS
// round trip: the LAN host asks the upstream server through the router,
// alternately from a port whose answers are held (and learned from) and
// from unheldPort, whose answers the rule lets through. It only reports
// (go test -v -run TestReinjectLatency ./pkg/dnslearn); it asserts that
// every answer came, never how fast.
func TestReinjectLatency(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	ln := l.listen(t, rec, "example.com")
	rounds := 1000
	if testing.Short() {
		rounds = 100
	}
	var held, unheld int
	open := func(port int) int {
		var fd int
		if err := inNetNS(int(l.client.Handle), func() (err error) {
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
			return unix.Bind(fd, &unix.SockaddrInet4{Port: port})
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 53, Addr: netip.MustParseAddr(serverAddr4).As4()}); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	held, unheld = open(31001), open(unheldPort)
	q := msg(t, []string{"www.example.com"}, nil, query)
	buf := make([]byte, 4096)
	rtt := func(fd int, id uint16) time.Duration {
		q[0], q[1] = byte(id>>8), byte(id)
		start := time.Now()
		if _, err := unix.Write(fd, q); err != nil {
			t.Fatal(err)
		}
		for {
			// A socket with SO_RCVTIMEO is never restarted after a signal
			// (signal(7)), and the Go runtime preempts with SIGURG: retry.
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
				return time.Since(start)
			}
		}
	}
	// Warm up (ARP, the conntrack entries, dnsmasq).
	for i := 0; i < 20; i++ {
		rtt(held, uint16(i))
		rtt(unheld, uint16(i))
	}
	rec.take()
	before := settled(ln)
	var with, without []time.Duration
	for i := 0; i < rounds; i++ {
		id := uint16(1000 + i)
		if i%2 == 0 {
			with = append(with, rtt(held, id))
			without = append(without, rtt(unheld, id))
		} else {
			without = append(without, rtt(unheld, id))
			with = append(with, rtt(held, id))
		}
	}
	s := settled(ln)
	if got := s.Reinjected - before.Reinjected; got != uint64(rounds) {
		t.Errorf("%d answers re-injected, want %d", got, rounds)
	}
	if got := len(rec.take()); got != rounds {
		t.Errorf("%d addresses learned, want %d", got, rounds)
	}
	pct := func(d []time.Duration, p int) time.Duration {
		d = slices.Clone(d)
		slices.Sort(d)
		return d[(len(d)-1)*p/100]
	}
	for _, p := range []int{50, 90, 99} {
		w, wo := pct(with, p), pct(without, p)
		t.Logf("p%d: held+re-injected %v, passed through %v: +%v, ratio %.2f", p, w, wo, w-wo, float64(w)/float64(wo))
	}
	t.Logf("%d interleaved round trips each way, client -> router (masquerade) -> dnsmasq", rounds)
}

// TestListenClose: one Listener per group, Close stops the handler and
// frees the group, and a new Listener takes over.
func TestListenClose(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	m, _ := NewMatcher([]string{"example.com"})
	opts := Options{NetNSFD: int(l.router.Handle), Group: labGroup, Mark: labMark, Matcher: m, Handle: rec.handle}
	ln, err := Listen(opts)
	if err != nil {
		t.Fatal(err)
	}
	if ln2, err := Listen(opts); err == nil {
		ln2.Close()
		t.Error("a second Listener bound the same group")
	}
	if _, err := Listen(Options{Group: 0}); err == nil {
		t.Error("Listen accepted group 0")
	}
	l.dig(t, serverAddr4, "example.com")
	if got := rec.take(); len(got) != 1 {
		t.Errorf("learned %q, want one address", got)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ln.Done():
	default:
		t.Error("Done not closed by Close")
	}
	if err := ln.Err(); err != nil {
		t.Errorf("Err after Close = %v, want nil", err)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	// Held answers are now lost: the daemon removes its rules first.
	if out, err := l.client.Try("dig", "+time=1", "+tries=1", "+short", "@"+serverAddr4, "example.com"); err == nil {
		t.Errorf("an answer came with no Listener: %s", out)
	}
	if got := rec.take(); len(got) != 0 {
		t.Errorf("learned %q after Close", got)
	}
	ln, err = Listen(opts)
	if err != nil {
		t.Fatalf("Listen after Close: %v", err)
	}
	defer ln.Close()
	if got := l.dig(t, serverAddr4, "example.com"); !slices.Equal(got, []string{"203.0.113.10"}) {
		t.Errorf("dig: %q", got)
	}
	if got := rec.take(); len(got) != 1 {
		t.Errorf("learned %q, want one address", got)
	}
}
