package health

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/untrusted"
	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/inet"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// probeError is a probe failure with a short form for reasons.
type probeError struct{ short, long string }

func (e *probeError) Error() string { return e.long }

// errLate is an answer that came after the timeout.
var errLate = &probeError{short: "timeout", long: "answer came after the timeout"}

// probeSet makes the probes of one monitor and owns their shared sockets
// (one raw ICMP socket per address family; TCP, HTTP and DNS probes open a
// socket per probe and close it before returning).
type probeSet struct {
	spec    Spec
	control func(network, address string, c syscall.RawConn) error
	// inNS, when set, runs socket creation in another network namespace
	// (tests); nil creates sockets in the process's own.
	inNS func(func() error) error

	mu      sync.Mutex
	pingers []*pinger
}

func newProbeSet(spec Spec, inNS func(func() error) error) *probeSet {
	return &probeSet{spec: spec, control: socketControl(spec.Interface, spec.Mark), inNS: inNS}
}

// socketControl gives every probe socket the uplink's mark, so policy
// routing sends it out of the uplink whatever the policies and balancer
// say (and wanpin's nftables leaves marked sockets alone), and binds it to
// the uplink's interface.
func socketControl(iface string, mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if mark != 0 {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
					serr = fmt.Errorf("SO_MARK %#x: %w", mark, err)
					return
				}
			}
			if iface != "" {
				if err := unix.BindToDevice(int(fd), iface); err != nil {
					serr = fmt.Errorf("SO_BINDTODEVICE %s: %w", iface, err)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("socket options: %w", err)
		}
		if serr != nil {
			// Short form kept whole: "SO_BINDTODEVICE ppp0: no such
			// device" says what is wrong, "no such device" does not.
			return &probeError{short: serr.Error(), long: serr.Error()}
		}
		return nil
	}
}

// socket runs f, which creates a socket, in the probes' namespace.
func (ps *probeSet) socket(f func() error) error {
	if ps.inNS == nil {
		return f()
	}
	return ps.inNS(f)
}

// source is the address to bind a socket of the family to: spec.Source
// when it is of that family, else none.
func (ps *probeSet) source(f inet.Family) (netip.Addr, bool) {
	src := ps.spec.Source.Unmap()
	if inet.Of(src) != f {
		return netip.Addr{}, false
	}
	return src, true
}

func (ps *probeSet) dialer(dst netip.Addr, network string) *net.Dialer {
	d := &net.Dialer{Control: ps.control, KeepAlive: -1}
	if src, ok := ps.source(inet.Of(dst)); ok {
		switch network {
		case "tcp":
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		case "udp":
			d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		}
	}
	return d
}

func (ps *probeSet) dial(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ps.socket(func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// targets makes one probe per configured target (config parsed them).
func (ps *probeSet) targets() []Target {
	cfg := ps.spec.Config
	out := make([]Target, 0, len(cfg.Targets))
	for _, t := range cfg.Targets {
		probe, err := ps.probe(cfg.Method, t)
		if err != nil {
			err = fmt.Errorf("%s target %q: %w", cfg.Method, t.Text, err)
			probe = func(context.Context) (time.Duration, error) { return 0, err }
		}
		out = append(out, Target{Name: t.Text, Probe: probe})
	}
	return out
}

func (ps *probeSet) probe(method string, t config.Target) (Probe, error) {
	switch method {
	case "tcp":
		return func(ctx context.Context) (time.Duration, error) { return ps.tcp(ctx, t.Addr) }, nil
	case "http":
		return func(ctx context.Context) (time.Duration, error) { return ps.http(ctx, t.Addr.Addr(), t.URL) }, nil
	case "dns":
		name := ps.spec.Config.DNSName
		if name == "" {
			name = "."
		}
		if !strings.HasSuffix(name, ".") {
			name += "."
		}
		qname, err := dnsmessage.NewName(name)
		if err != nil {
			return nil, fmt.Errorf("dns_name %q: %w", name, err)
		}
		return func(ctx context.Context) (time.Duration, error) { return ps.dns(ctx, t.Addr, qname) }, nil
	case "icmp", "":
		dst := t.Addr.Addr()
		p := ps.pinger(inet.Of(dst))
		return func(ctx context.Context) (time.Duration, error) { return p.probe(ctx, dst) }, nil
	}
	return nil, fmt.Errorf("unknown method %q", method)
}

func (ps *probeSet) pinger(f inet.Family) *pinger {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.pingers {
		if p.fam == f {
			return p
		}
	}
	p := newPinger(ps, f)
	ps.pingers = append(ps.pingers, p)
	return p
}

// reset closes the shared sockets; the next probe opens new ones.
func (ps *probeSet) reset() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.pingers {
		p.reset()
	}
}

// close closes the shared sockets for good and waits for their readers.
func (ps *probeSet) close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.pingers {
		p.close()
	}
}

// tcp connects and closes at once. A reset (connection refused) counts as
// an answer: the SYN went out through the ISP and the RST came back, which
// is all a probe has to show. The close sends a RST too (linger 0), so the
// router keeps no TIME_WAIT entry per probe.
func (ps *probeSet) tcp(ctx context.Context, dst netip.AddrPort) (time.Duration, error) {
	start := time.Now()
	c, err := ps.dial(ctx, ps.dialer(dst.Addr(), "tcp"), "tcp", dst.String())
	rtt := time.Since(start)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return rtt, nil
		}
		return 0, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // best effort: a plain close is fine too
	}
	c.Close()
	return rtt, nil
}

// http sends a GET and counts any status below 500 as an answer: a 404 or
// a redirect still proves the path (a 5xx more likely comes from a proxy
// that could not get through). Redirects are not followed (they could
// name a host, resolved by the system resolver without the mark); no proxy
// from the environment is used.
func (ps *probeSet) http(ctx context.Context, dst netip.Addr, target string) (time.Duration, error) {
	d := ps.dialer(dst, "tcp")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := ps.dial(ctx, d, network, address)
			if tc, ok := c.(*net.TCPConn); ok {
				// As for tcp: no TIME_WAIT entry per probe.
				_ = tc.SetLinger(0)
			}
			return c, err
		},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 16 << 10,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, fmt.Errorf("http request: %w", err)
	}
	req.Header.Set("User-Agent", "wanpin-health")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, httpFailure(target, err)
	}
	rtt := time.Since(start)
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return 0, &probeError{short: fmt.Sprintf("HTTP %d", resp.StatusCode),
			long: fmt.Sprintf("GET %s: HTTP %s", target, untrusted.Text(resp.Status, maxShort))}
	}
	return rtt, nil
}

// httpFailure gives a failed GET a short form that holds none of the
// server's bytes. Go quotes what it could not parse (malformed MIME header
// line: "...") and shortErr keeps what follows the last ": ", which could
// fall inside the quote: a target of anyone's choosing put shell syntax
// and terminal escapes into the reason, and from there into logs, status,
// D-Bus and the environment of hooks run as root (issue 13). What the
// transport says before the first quote names the fault and is kept.
func httpFailure(target string, err error) error {
	var oe *net.OpError
	if ne := net.Error(nil); errors.As(err, &oe) || errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err // the kernel's words or the deadline's, none of the server's
	}
	msg := err.Error()
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		msg = ue.Err.Error() // without `Get "URL": `, whose quote is ours
	}
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimRight(msg[:i], ": ")
	}
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	if msg == "" {
		msg = "bad HTTP answer"
	}
	return &probeError{short: untrusted.Text(msg, maxShort),
		long: fmt.Sprintf("GET %s: %s", target, untrusted.Text(err.Error(), maxReason))}
}

// dns asks server for qname's NS records over UDP. Any well-formed answer
// to our query counts, whatever its rcode: a REFUSED or SERVFAIL came back
// through the ISP just as well. An ICMP port unreachable (connection
// refused) does not count: any router on the way could have sent it.
func (ps *probeSet) dns(ctx context.Context, server netip.AddrPort, qname dnsmessage.Name) (time.Duration, error) {
	var idb [2]byte
	_, _ = rand.Read(idb[:]) // crypto/rand does not fail on Linux
	id := binary.BigEndian.Uint16(idb[:])
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return 0, fmt.Errorf("dns query: %w", err)
	}
	if err := b.Question(dnsmessage.Question{Name: qname, Type: dnsmessage.TypeNS, Class: dnsmessage.ClassINET}); err != nil {
		return 0, fmt.Errorf("dns query: %w", err)
	}
	query, err := b.Finish()
	if err != nil {
		return 0, fmt.Errorf("dns query: %w", err)
	}

	conn, err := ps.dial(ctx, ps.dialer(server.Addr(), "udp"), "udp", server.String())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Stop (the parent context) must not wait for the deadline.
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })()
	start := time.Now()
	if _, err := conn.Write(query); err != nil {
		return 0, fmt.Errorf("dns query to %s: %w", server, err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("dns query to %s: %w", server, ctx.Err())
			}
			return 0, fmt.Errorf("dns query to %s: %w", server, err)
		}
		if dnsAnswers(buf[:n], id, qname) {
			return time.Since(start), nil
		}
		// Not ours or garbage: keep waiting for the real one.
	}
}

// dnsAnswers tells whether msg is a well-formed response to query id for
// qname. Servers may leave the question out of an error response (FORMERR,
// REFUSED); that still counts.
func dnsAnswers(msg []byte, id uint16, qname dnsmessage.Name) bool {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.ID != id || !h.Response {
		return false
	}
	q, err := p.Question()
	if errors.Is(err, dnsmessage.ErrSectionDone) {
		return true
	}
	return err == nil && strings.EqualFold(q.Name.String(), qname.String()) &&
		q.Type == dnsmessage.TypeNS && q.Class == dnsmessage.ClassINET
}
