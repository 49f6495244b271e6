// Package metrics serves wanpin's state in the Prometheus text exposition
// format through github.com/VictoriaMetrics/metrics. A scrape reads the
// status the daemon's loop last published (core.Status): it never waits
// for the loop and never touches the kernel.
//
// The port is open to whoever can reach it, so it is built not to let
// anyone exhaust the daemon (issue 13: 21,600 idle connections used up its
// file descriptors, the health probes failed and both uplinks went down):
// it listens on loopback unless told otherwise (CheckAddr), holds few
// connections (the rest wait in the kernel's backlog, costing the daemon
// nothing) and times them out, and paces connections and requests, so
// that whatever clients do costs the daemon a bounded share of a core
// (DefaultLimits).
//
// Why not prometheus/client_golang: side by side in one run (go run
// ./internal/bench -only resources, 4 dual-stack uplinks x 4 targets,
// the shipped build), it added 1.8-2.0 MB resident (17.3-17.5 MB without
// metrics, 19.4-19.7 MB with it: its protobuf descriptors are registered
// at start whether metrics are on or not), which crosses the daemon's
// 20 MB target; this library added 0.1-0.3 MB.
package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	vm "github.com/VictoriaMetrics/metrics"
	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/core"
)

// Source returns the status to export.
type Source func() (core.Status, error)

func init() {
	// # TYPE lines, as Prometheus expects them.
	vm.ExposeMetadata(true)
}

// Write renders a status, then the Go runtime's and the process's own
// figures (go_goroutines, process_resident_memory_bytes,
// process_cpu_seconds_total, process_open_fds...).
func Write(w io.Writer, s core.Status) {
	set := vm.NewSet()
	gauge := func(name, labels string, v float64) { set.GetOrCreateGauge(name+"{"+labels+"}", nil).Set(v) }
	counter := func(name, labels string, v float64) { set.GetOrCreateFloatCounter(name + "{" + labels + "}").Set(v) }
	for _, u := range s.Uplinks {
		// Interface names are printable ASCII without '"' (ifname.Check):
		// %q escapes the backslash as the exposition format wants.
		l := fmt.Sprintf(`interface=%q,uplink=%q`, u.Interface, u.Name)
		gauge("wanpin_uplink_up", l, b2f(u.State == "up"))
		counter("wanpin_uplink_transitions_total", l, float64(u.Transitions))
		gauge("wanpin_uplink_pinned_connections", l, float64(u.Pinned))
		gauge("wanpin_uplink_weight", l, float64(u.Weight))
		if u.WeightAuto {
			if u.Capacity > 0 {
				gauge("wanpin_uplink_capacity_estimate_bits_per_second", l, u.Capacity)
			}
			if u.Bandwidth > 0 {
				gauge("wanpin_uplink_bandwidth_bits_per_second", l, float64(u.Bandwidth))
			}
		}
		counter("wanpin_uplink_conntrack_flushed_total", l, float64(u.Flushed))
		counter("wanpin_uplink_failback_moved_total", l, float64(u.FailbackMoved))
		counter("wanpin_uplink_bytes_total", `direction="in",`+l, float64(u.Traffic.InBytes))
		counter("wanpin_uplink_bytes_total", `direction="out",`+l, float64(u.Traffic.OutBytes))
		counter("wanpin_uplink_packets_total", `direction="in",`+l, float64(u.Traffic.InPackets))
		counter("wanpin_uplink_packets_total", `direction="out",`+l, float64(u.Traffic.OutPackets))
		if m := u.MPTCP; m != nil {
			gauge("wanpin_uplink_mptcp_endpoints", l, float64(m.Endpoints))
			gauge("wanpin_uplink_mptcp_subflows", l, float64(m.Subflows))
		}
		if q := u.Quota; q != nil {
			gauge("wanpin_uplink_quota_bytes", l, float64(q.Limit))
			gauge("wanpin_uplink_quota_used_bytes", l, float64(q.Used))
			gauge("wanpin_uplink_quota_exhausted", l, b2f(q.Exhausted))
			gauge("wanpin_uplink_quota_next_reset_timestamp_seconds", l, float64(q.NextReset.Unix()))
		}
		for _, f := range []struct {
			name string
			r    core.FamilyReport
		}{{"ipv4", u.IPv4}, {"ipv6", u.IPv6}} {
			lf := fmt.Sprintf(`family=%q,%s`, f.name, l)
			gauge("wanpin_uplink_family_up", lf, b2f(f.r.State == "up"))
			if f.r.RTTms > 0 {
				gauge("wanpin_uplink_rtt_seconds", lf, f.r.RTTms/1000)
			}
			if f.r.Loss >= 0 {
				gauge("wanpin_uplink_loss_ratio", lf, f.r.Loss)
			}
		}
	}
	if s.MPTCPConnections > 0 || (len(s.Uplinks) > 0 && s.Uplinks[0].MPTCP != nil) {
		set.GetOrCreateGauge("wanpin_mptcp_connections", nil).Set(float64(s.MPTCPConnections))
	}
	if d := s.Domains; d != nil {
		set.GetOrCreateGauge("wanpin_dns_learning", nil).Set(b2f(d.Learning))
		counter("wanpin_dns_answers_total", `outcome="held"`, float64(d.Held))
		counter("wanpin_dns_answers_total", `outcome="reinjected"`, float64(d.Reinjected))
		counter("wanpin_dns_answers_total", `outcome="lost"`, float64(d.ReinjectErrors+d.Overruns))
		counter("wanpin_dns_answers_total", `outcome="unparsable"`, float64(d.ParseErrors))
		counter("wanpin_dns_learned_addresses_total", `outcome="added"`, float64(d.Added))
		counter("wanpin_dns_learned_addresses_total", `outcome="refused"`, float64(d.AddErrors))
	}
	set.GetOrCreateFloatCounter("wanpin_applies_total").Set(float64(s.Applies))
	set.GetOrCreateFloatCounter("wanpin_apply_errors_total").Set(float64(s.ApplyErrors))
	set.WritePrometheus(w)
	vm.WriteProcessMetrics(w)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Limits bound what clients can make the server hold and do.
type Limits struct {
	// MaxConns connections are held at most; the others wait in the
	// kernel's backlog, or are refused there when it is full
	// (net.core.somaxconn), and cost the daemon nothing.
	MaxConns int
	// AcceptBurst connections at most are taken per AcceptWindow.
	AcceptWindow time.Duration
	AcceptBurst  int
	// ScrapeGap is the least time between two requests the server starts
	// answering.
	ScrapeGap time.Duration

	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
}

// DefaultLimits are the daemon's.
//
// Prometheus keeps one connection per target and sends its request at
// once: 32 connections is far above any number of scrapers and far below
// any descriptor limit (the daemon's own are about 20).
//
// 1,000 connections a second, taken 10 per 10 ms: a request the server
// cannot parse gets 400 and the end of its connection before any handler
// sees it. Unpaced, 32 clients sending garbage took 40% of a core of the
// server (75,000 connections in 5 s). Taken one a millisecond with a
// sleep before each, 11%: the sleeps cost as much as the connections. In
// bursts, one sleep per window, 6.6% (4,600 connections in 5 s);
// connecting and closing at once, 5.4%. The 4,096 connections a full
// backlog holds are through in 4 s.
//
// One request per 20 ms: rendering (330 µs and 100 KB allocated, the
// process's figures read from /proc take most of it) then costs at most
// 1.7% of a core, whatever clients do. A request waits for its turn (it
// never gets an error for coming early), and at most MaxConns wait at
// once (one per connection), so its turn comes within 0.64 s.
//
// The timeouts: Prometheus's default scrape timeout is 10 s; a scraper
// whose interval is longer than IdleTimeout simply connects again.
var DefaultLimits = Limits{
	MaxConns:          32,
	AcceptWindow:      10 * time.Millisecond,
	AcceptBurst:       10,
	ScrapeGap:         20 * time.Millisecond,
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      10 * time.Second,
	IdleTimeout:       30 * time.Second,
	MaxHeaderBytes:    8 << 10,
}

// Addr is a checked listening address.
type Addr struct {
	// Host is the numeric address; invalid for "every address" (":9469").
	Host netip.Addr
	Port uint16
}

// Loopback reports whether only this machine can connect.
func (a Addr) Loopback() bool { return a.Host.IsValid() && a.Host.IsLoopback() }

// Every reports whether a binds every address of the machine.
func (a Addr) Every() bool { return !a.Host.IsValid() || a.Host.IsUnspecified() }

func (a Addr) String() string {
	if !a.Host.IsValid() {
		return ":" + strconv.Itoa(int(a.Port))
	}
	return netip.AddrPortFrom(a.Host, a.Port).String()
}

// ErrNotLoopback is returned by CheckAddr for an address other machines
// can reach, without public.
var ErrNotLoopback = errors.New("other machines could connect")

// CheckAddr parses a listening address, host:port with a numeric host
// (127.0.0.1:9469, [::1]:9469) and a numeric port. A host name is refused
// rather than resolved: what it resolves to can change under a running
// daemon and may include a public address ("0" and "localhost" among
// them). An address other machines can reach is refused unless public:
// every address (":9469", "0.0.0.0:9469", "[::]:9469", which include the
// uplinks') as well as any one that is not loopback.
func CheckAddr(s string, public bool) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("%q: want host:port, e.g. 127.0.0.1:9469 or [::1]:9469: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("%q: port %q is not a number from 0 to 65535", s, port)
	}
	a := Addr{Port: uint16(p)}
	if host != "" {
		if a.Host, err = netip.ParseAddr(host); err != nil {
			return Addr{}, fmt.Errorf("%q: %q is not a numeric address (names are not resolved: use 127.0.0.1 or ::1)", s, host)
		}
	}
	switch {
	case public || a.Loopback():
		return a, nil
	case a.Every():
		return Addr{}, fmt.Errorf("%q binds every address, the uplinks' included: %w; use 127.0.0.1:%d, or add --metrics-public if that is meant", s, ErrNotLoopback, a.Port)
	default:
		return Addr{}, fmt.Errorf("%q is not loopback: %w; use 127.0.0.1:%d, or add --metrics-public if that is meant", s, ErrNotLoopback, a.Port)
	}
}

// Listen opens a checked address. A single address is bound with
// IP_FREEBIND: wanpin starts before the network is configured
// (Before=network.target), when a LAN address may not exist yet.
func Listen(a Addr) (net.Listener, error) {
	lc := net.ListenConfig{}
	if !a.Every() && !a.Loopback() {
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if a.Host.Unmap().Is4() { // Go opens an IPv4 socket for ::ffff:a.b.c.d
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
				}
			})
			if err == nil {
				err = serr
			}
			if err != nil {
				return fmt.Errorf("IP_FREEBIND: %w", err)
			}
			return nil
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", a.String())
	if err != nil {
		return nil, fmt.Errorf("metrics: listening on %s: %w", a, err)
	}
	return ln, nil
}

// Handler is the /metrics handler.
func Handler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := src()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		Write(w, s)
	})
}

// NewServer is the HTTP server Serve runs: /metrics, requests paced,
// lim's timeouts and header bound. Its own complaints about clients go to
// log at debug level: what a client sends must not flood the daemon's
// log.
func NewServer(src Source, lim Limits, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(src))
	return &http.Server{
		Handler:           pace(mux, lim.ScrapeGap),
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Serve answers on ln within lim until ctx ends, and closes ln.
func Serve(ctx context.Context, ln net.Listener, src Source, lim Limits, log *slog.Logger) error {
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		// Asked for with --metrics-public; said once more where it is seen.
		log.Warn("metrics on an address other machines can reach: keep it behind a firewall", "address", tcp.String(),
			"every_address", tcp.IP.IsUnspecified())
	} else {
		log.Info("metrics on", "address", ln.Addr().String())
	}
	srv := NewServer(src, lim, log)
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(Limit(ln, lim)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serving on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Limit is ln holding at most lim.MaxConns connections and taking at most
// lim.AcceptBurst of them per lim.AcceptWindow.
func Limit(ln net.Listener, lim Limits) net.Listener {
	return &pacedListener{Listener: netutil.LimitListener(ln, lim.MaxConns), window: lim.AcceptWindow, burst: lim.AcceptBurst}
}

// pacedListener takes at most burst connections per window, sleeping
// once per window rather than once per connection. http.Server calls
// Accept from one goroutine.
type pacedListener struct {
	net.Listener
	window time.Duration
	burst  int
	start  time.Time // of the current window
	taken  int       // in it
}

func (l *pacedListener) Accept() (net.Conn, error) {
	if l.taken >= l.burst {
		if wait := l.window - time.Since(l.start); wait > 0 {
			time.Sleep(wait)
		}
		l.taken = 0
	}
	c, err := l.Listener.Accept()
	if l.taken == 0 {
		l.start = time.Now()
	}
	l.taken++
	return c, err
}

// pace serves h one request per gap at most. A request waits for its
// turn, first come first served, and gives it up when its client goes
// (net/http cancels the request's context when it reads the end of the
// connection): after an attack, the backlog's connections whose clients
// have left are through at the accept pace, not at one a gap. The answer
// is rendered into memory during the turn and written after it, so that
// a client that does not read holds its own connection only.
func pace(h http.Handler, gap time.Duration) http.Handler {
	turn := make(chan struct{}, 1)
	var last time.Time // of the last render; guarded by turn
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		select {
		case turn <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if wait := gap - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		if ctx.Err() != nil {
			<-turn
			return
		}
		last = time.Now()
		b := &bufferedWriter{header: w.Header(), code: http.StatusOK}
		h.ServeHTTP(b, r)
		<-turn
		w.Header().Set("Content-Length", strconv.Itoa(b.buf.Len()))
		w.WriteHeader(b.code)
		w.Write(b.buf.Bytes())
	})
}

// bufferedWriter keeps an answer for writing later. Its header is the
// real writer's: nothing is sent before WriteHeader.
type bufferedWriter struct {
	header http.Header
	code   int
	wrote  bool
	buf    bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.header }

func (b *bufferedWriter) WriteHeader(code int) {
	if !b.wrote {
		b.code, b.wrote = code, true
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	b.wrote = true
	return b.buf.Write(p)
}
