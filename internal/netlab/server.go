package netlab

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

// server holds the services the lab's server runs, inside the test
// process: their sockets are created in the server namespace and keep it.
type server struct {
	mu        sync.Mutex
	seen      map[string]int
	listeners []net.Listener
	udp       []net.PacketConn
	iperf     *Proc
	wg        sync.WaitGroup
}

// InNetNS runs f on a thread switched into the namespace ns (sockets
// f opens stay there). The thread is switched back before it is
// released, so no other goroutine ever runs in ns.
func InNetNS(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread is unusable; do not give it back to the runtime.
		runtime.Goexit()
	}
	return ferr
}

func startServer(l *Lab) (*server, error) {
	s := &server{seen: map[string]int{}}
	err := InNetNS(l.Server, func() error {
		for _, addr := range []string{"0.0.0.0", "::"} {
			network := "tcp4"
			if addr == "::" {
				network = "tcp6"
			}
			for _, port := range []int{PortWhoami, PortStream} {
				ln, err := net.Listen(network, net.JoinHostPort(addr, fmt.Sprint(port)))
				if err != nil {
					return err
				}
				s.listeners = append(s.listeners, ln)
			}
		}
		// UDP sockets are bound to each service address: an unbound
		// socket would answer from the address of the interface toward
		// the client, which no NAT entry on the router expects.
		for _, addr := range []string{ServerAddr4, ServerAlt4, ServerAddr6, ServerAlt6} {
			pc, err := net.ListenPacket("udp", net.JoinHostPort(addr, fmt.Sprint(PortUDP)))
			if err != nil {
				return err
			}
			s.udp = append(s.udp, pc)
		}
		return nil
	})
	if err != nil {
		s.close()
		return nil, err
	}
	for _, ln := range s.listeners {
		port := ln.Addr().(*net.TCPAddr).Port
		s.wg.Add(1)
		go s.accept(ln, port)
	}
	for _, pc := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(pc)
	}
	s.iperf, err = l.Start(l.Server, "/dev/null", "iperf3", "-s", "-p", fmt.Sprint(PortIperf))
	if err != nil {
		s.close()
		return nil, err
	}
	// Return only once iperf3 listens: a test may use it at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		out, _ := l.Exec(l.Server, "ss", "-Hltn", fmt.Sprintf("sport = :%d", PortIperf))
		if strings.Contains(out, fmt.Sprint(PortIperf)) {
			break
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("iperf3 does not listen on %d", PortIperf)
		}
	}
	return s, nil
}

func (s *server) record(addr net.Addr) string {
	var ip string
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP.String()
	case *net.UDPAddr:
		ip = a.IP.String()
	}
	s.mu.Lock()
	s.seen[ip]++
	s.mu.Unlock()
	return ip
}

func (s *server) accept(ln net.Listener, port int) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		peer := s.record(c.RemoteAddr())
		if port == PortStream {
			go stream(c)
		} else {
			go whoami(c, peer)
		}
	}
}

// whoami answers the peer address: as an HTTP response when the client
// speaks HTTP (curl), else as one raw line. It waits briefly for a
// request so that raw clients that send nothing still get the line.
func whoami(c net.Conn, peer string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	first, err := br.ReadString('\n')
	if err == nil && strings.Contains(first, "HTTP/") {
		for {
			line, err := br.ReadString('\n')
			if err != nil || strings.TrimSpace(line) == "" {
				break
			}
		}
		body := peer + "\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		return
	}
	fmt.Fprintln(c, peer)
}

// stream sends 64 KiB every 10 ms until the client goes away.
func stream(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

func (s *server) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		peer := s.record(addr)
		pc.WriteTo([]byte(peer+"\n"), addr)
	}
}

func (s *server) close() {
	for _, ln := range s.listeners {
		ln.Close()
	}
	for _, pc := range s.udp {
		pc.Close()
	}
	if s.iperf != nil {
		s.iperf.Close()
	}
	s.wg.Wait()
}

// Seen returns how many connections (TCP) and datagrams (UDP) the server
// got from each source address since the last ResetSeen.
func (l *Lab) Seen() map[string]int {
	l.server.mu.Lock()
	defer l.server.mu.Unlock()
	out := make(map[string]int, len(l.server.seen))
	for k, v := range l.server.seen {
		out[k] = v
	}
	return out
}

// ResetSeen forgets what the server has seen.
func (l *Lab) ResetSeen() {
	l.server.mu.Lock()
	l.server.seen = map[string]int{}
	l.server.mu.Unlock()
}
