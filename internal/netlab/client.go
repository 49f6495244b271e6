package netlab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CurlMany opens n new TCP connections from the LAN host to the server's
// whoami service with curl, and returns how many arrived through each ISP
// as the server saw them. The server closes every connection, so curl
// opens a new one per URL.
func (l *Lab) CurlMany(n int) (map[int]int, error) {
	return l.CurlManyFrom(l.LAN, ServerAddr4, n)
}

// CurlManyFrom is CurlMany from namespace ns to server address dst.
func (l *Lab) CurlManyFrom(ns, dst string, n int) (map[int]int, error) {
	return l.curlMany(ns, "", dst, n)
}

// CurlManySrc is CurlMany from the LAN host's address src (one of its
// addresses, say LANHostIn6(2)) to dst.
func (l *Lab) CurlManySrc(src, dst string, n int) (map[int]int, error) {
	return l.curlMany(l.LAN, src, dst, n)
}

func (l *Lab) curlMany(ns, src, dst string, n int) (map[int]int, error) {
	host := dst
	if strings.Contains(dst, ":") {
		host = "[" + dst + "]"
	}
	url := fmt.Sprintf("http://%s:%d/", host, PortWhoami)
	counts := map[int]int{}
	// Batches keep the command line short; each URL is its own
	// connection. The lab loses nothing, so the first failure is
	// reported at once instead of waiting out every later URL.
	for done := 0; done < n; {
		batch := min(100, n-done)
		args := []string{"curl", "-sS", "--connect-timeout", "3", "-m", "10", "--fail-early", "--retry", "0", "-H", "Connection: close"}
		if src != "" {
			args = append(args, "--interface", src)
		}
		for i := 0; i < batch; i++ {
			args = append(args, url)
		}
		out, err := l.Exec(ns, args...)
		if err != nil {
			return counts, fmt.Errorf("%w: %s", err, out)
		}
		for _, line := range strings.Fields(out) {
			counts[l.ISPOf(line)]++
		}
		done += batch
	}
	return counts, nil
}

// UDPExchange sends one datagram from the LAN host's fixed source port to
// the server's UDP service with socat and returns the address the server
// saw ("" when no answer came within timeout).
func (l *Lab) UDPExchange(srcPort int, dst string, timeout time.Duration) (string, error) {
	host := dst
	if strings.Contains(dst, ":") {
		host = "[" + dst + "]"
	}
	out, err := l.Exec(l.LAN, "sh", "-c", fmt.Sprintf("echo ping | socat -t %.3[1]f -T %.3[1]f - UDP:%[2]s:%[3]d,sourceport=%[4]d,reuseaddr",
		timeout.Seconds(), host, PortUDP, srcPort))
	// socat exits non-zero on a timeout: no answer is an answer ("").
	// Anything else that is not an address is a broken command.
	got := strings.TrimSpace(out)
	if got == "" {
		return "", nil
	}
	if net.ParseIP(got) == nil {
		return "", fmt.Errorf("lab: udp exchange: %v: %s", err, got)
	}
	return got, nil
}

// Stream is a long-lived TCP download from the server's stream service,
// opened from the LAN host.
type Stream struct {
	conn     net.Conn
	received atomic.Int64
	mu       sync.Mutex
	err      error
	done     chan struct{}
	peer     func() string
}

// OpenStream opens a stream from the LAN namespace to dst (ServerAddr4 if
// empty). The connection's socket lives in the LAN namespace.
func (l *Lab) OpenStream(dst string) (*Stream, error) { return l.OpenStreamFrom("", dst) }

// OpenStreamFrom is OpenStream from the LAN host's address src ("": the
// kernel chooses).
func (l *Lab) OpenStreamFrom(src, dst string) (*Stream, error) {
	if dst == "" {
		dst = ServerAddr4
	}
	var conn net.Conn
	before := l.Seen()
	err := InNetNS(l.LAN, func() error {
		var err error
		d := net.Dialer{Timeout: 5 * time.Second}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		conn, err = d.Dial("tcp", net.JoinHostPort(dst, fmt.Sprint(PortStream)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: opening a stream to %s: %w", dst, err)
	}
	s := &Stream{conn: conn, done: make(chan struct{})}
	// The server recorded the connection's source: the one address whose
	// count grew.
	var peer string
	for i := 0; i < 50 && peer == ""; i++ {
		for addr, n := range l.Seen() {
			if n > before[addr] {
				peer = addr
			}
		}
		if peer == "" {
			time.Sleep(10 * time.Millisecond)
		}
	}
	s.peer = func() string { return peer }
	go func() {
		defer close(s.done)
		buf := make([]byte, 256<<10)
		for {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			s.received.Add(int64(n))
			if err != nil {
				if err != io.EOF {
					s.mu.Lock()
					s.err = err
					s.mu.Unlock()
				}
				return
			}
		}
	}()
	return s, nil
}

// Received is the number of bytes received so far.
func (s *Stream) Received() int64 { return s.received.Load() }

// Peer is the source address the server saw for this stream.
func (s *Stream) Peer() string { return s.peer() }

// Err is the error that ended the stream, if it ended.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close closes the stream.
func (s *Stream) Close() {
	s.conn.Close()
	<-s.done
}

// UDPFlow sends a datagram from a fixed source port on the LAN host to
// the server every interval, like a VoIP call or a WireGuard tunnel, and
// records which address the server saw in each answer.
type UDPFlow struct {
	sent    atomic.Int64
	failed  atomic.Int64
	conn    net.PacketConn
	send    func() error
	mu      sync.Mutex
	answers []UDPAnswer
	stop    chan struct{}
	done    sync.WaitGroup
}

// UDPAnswer is one reply: when it came and the source the server saw.
type UDPAnswer struct {
	At   time.Time
	Seen string
}

// StartUDPFlow starts a flow from LANHost4:srcPort (LANHost6 for an IPv6
// dst) to dst.
func (l *Lab) StartUDPFlow(srcPort int, dst string, interval time.Duration) (*UDPFlow, error) {
	src := LANHost4
	if strings.Contains(dst, ":") {
		src = LANHost6
	}
	return l.StartUDPFlowFrom(src, srcPort, dst, interval)
}

// StartUDPFlowFrom starts a flow from src:srcPort on the LAN host to dst.
func (l *Lab) StartUDPFlowFrom(src string, srcPort int, dst string, interval time.Duration) (*UDPFlow, error) {
	var conn net.PacketConn
	err := InNetNS(l.LAN, func() error {
		var err error
		conn, err = net.ListenPacket("udp", net.JoinHostPort(src, fmt.Sprint(srcPort)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: udp flow socket: %w", err)
	}
	to, err := net.ResolveUDPAddr("udp", net.JoinHostPort(dst, fmt.Sprint(PortUDP)))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return startUDPFlow(conn, func() error { _, err := conn.WriteTo([]byte("ping"), to); return err }, interval), nil
}

// StartConnectedUDPFlow starts a flow from a connected socket in the
// namespace ns (the router: an NTP or VPN client), whose source address
// the kernel fixed at connect.
func (l *Lab) StartConnectedUDPFlow(ns, dst string, interval time.Duration) (*UDPFlow, error) {
	var conn *net.UDPConn
	err := InNetNS(ns, func() error {
		c, err := net.Dial("udp", net.JoinHostPort(dst, fmt.Sprint(PortUDP)))
		if err == nil {
			conn = c.(*net.UDPConn)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: udp flow socket: %w", err)
	}
	return startUDPFlow(conn, func() error { _, err := conn.Write([]byte("ping")); return err }, interval), nil
}

func startUDPFlow(conn net.PacketConn, send func() error, interval time.Duration) *UDPFlow {
	f := &UDPFlow{conn: conn, send: send, stop: make(chan struct{})}
	f.done.Add(2)
	go func() {
		defer f.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if err := f.send(); err == nil {
				f.sent.Add(1)
			} else {
				f.failed.Add(1)
			}
			select {
			case <-f.stop:
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer f.done.Done()
		buf := make([]byte, 256)
		for {
			n, _, err := conn.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			} else if err != nil {
				// A connected socket reports the ICMP errors its
				// datagrams met (ECONNREFUSED, EHOSTUNREACH): it is
				// still open.
				continue
			}
			f.mu.Lock()
			f.answers = append(f.answers, UDPAnswer{At: time.Now(), Seen: strings.TrimSpace(string(buf[:n]))})
			f.mu.Unlock()
		}
	}()
	return f
}

// Local is the flow's own address.
func (f *UDPFlow) Local() string { return f.conn.LocalAddr().String() }

// Failed is how many sends the kernel refused (no route, unreachable).
func (f *UDPFlow) Failed() int64 { return f.failed.Load() }

// Sent is how many datagrams were sent.
func (f *UDPFlow) Sent() int64 { return f.sent.Load() }

// Answers returns the replies so far.
func (f *UDPFlow) Answers() []UDPAnswer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]UDPAnswer(nil), f.answers...)
}

// Close stops the flow.
func (f *UDPFlow) Close() {
	close(f.stop)
	f.conn.Close()
	f.done.Wait()
}
