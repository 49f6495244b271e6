package health

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// icmpIDs hands every pinger of the process its own echo identifier: a raw
// socket sees every ICMP packet of its device, other monitors' replies
// included. Random start, so two wanpin processes (a test next to the
// daemon) are unlikely to share one.
var icmpIDs atomic.Uint32

func init() {
	var b [2]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on Linux
	icmpIDs.Store(uint32(binary.BigEndian.Uint16(b[:])))
}

var errPingerClosed = errors.New("icmp: monitor stopped")

// pinger sends echo requests of one address family for one monitor on one
// raw socket and matches the replies to the waiting probes by identifier,
// sequence and source. The socket is opened by the first probe that needs
// it and again after a reset.
type pinger struct {
	ps  *probeSet
	fam inet.Family
	id  uint16

	mu      sync.Mutex
	conn    net.PacketConn // nil: open on the next probe
	seq     uint16
	waiting map[uint16]*waiter
	closed  bool
	readers sync.WaitGroup
}

type waiter struct {
	dst  netip.Addr
	sent time.Time
	done chan reply // buffered: the reader never blocks on it
}

type reply struct {
	at  time.Time
	err error
}

func newPinger(ps *probeSet, fam inet.Family) *pinger {
	return &pinger{ps: ps, fam: fam, id: uint16(icmpIDs.Add(1)), waiting: map[uint16]*waiter{}}
}

func (p *pinger) probe(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, errPingerClosed
	}
	if p.conn == nil {
		if err := p.open(ctx); err != nil {
			p.mu.Unlock()
			return 0, err
		}
	}
	conn := p.conn
	p.seq++
	seq := p.seq
	w := &waiter{dst: dst, sent: time.Now(), done: make(chan reply, 1)}
	p.waiting[seq] = w
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if p.waiting[seq] == w {
			delete(p.waiting, seq)
		}
		p.mu.Unlock()
	}()

	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.fam == inet.IPv6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	// The kernel fills in the ICMPv6 checksum (it needs the addresses);
	// Marshal computes the ICMPv4 one.
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(p.id), Seq: int(seq), Data: []byte("wanpin health")}}).Marshal(nil)
	if err != nil {
		return 0, fmt.Errorf("icmp echo: %w", err)
	}
	if _, err := conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("icmp echo to %s: %w", dst, err)
	}
	select {
	case r := <-w.done:
		if r.err != nil {
			return 0, r.err
		}
		return r.at.Sub(w.sent), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("icmp echo to %s: %w", dst, ctx.Err())
	}
}

// open opens the raw socket and starts its reader; p.mu is held. Raw
// sockets are used rather than unprivileged ping sockets: those need
// net.ipv4.ping_group_range, which is off in every new namespace.
func (p *pinger) open(ctx context.Context) error {
	network := "ip4:icmp"
	if p.fam == inet.IPv6 {
		network = "ip6:ipv6-icmp"
	}
	laddr := ""
	if src, ok := p.ps.source(p.fam); ok {
		laddr = src.String()
	}
	lc := net.ListenConfig{Control: p.ps.control}
	var c net.PacketConn
	err := p.ps.socket(func() error {
		var err error
		c, err = lc.ListenPacket(ctx, network, laddr)
		return err
	})
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	// Let only echo replies and the errors that can answer an echo request
	// through: the socket otherwise gets every ICMP packet of the device
	// (neighbour discovery included). The filter only saves work, the
	// matching below does not rely on it, so a failure to set it is not
	// one to stop on.
	if p.fam == inet.IPv6 {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeEchoReply)
		f.Accept(ipv6.ICMPTypeDestinationUnreachable)
		f.Accept(ipv6.ICMPTypeTimeExceeded)
		_ = ipv6.NewPacketConn(c).SetICMPFilter(&f)
	} else {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv4.ICMPTypeEchoReply)
		f.Accept(ipv4.ICMPTypeDestinationUnreachable)
		f.Accept(ipv4.ICMPTypeTimeExceeded)
		_ = ipv4.NewPacketConn(c).SetICMPFilter(&f)
	}
	p.conn = c
	p.readers.Add(1)
	go p.read(c)
	return nil
}

// reset closes the socket; the next probe opens a new one.
func (p *pinger) reset() {
	p.mu.Lock()
	c := p.conn
	p.conn = nil
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// close closes the socket for good and waits for its reader.
func (p *pinger) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.reset()
	p.readers.Wait()
}

// read delivers replies until the socket is closed.
func (p *pinger) read(c net.PacketConn) {
	defer p.readers.Done()
	proto := 1 // iana ICMP
	if p.fam == inet.IPv6 {
		proto = 58 // iana IPv6-ICMP
	}
	buf := make([]byte, 1500)
	for {
		// IPv4 raw reads come without the IP header: net strips it.
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			// Closed, or broken: either way the next probe opens anew.
			p.mu.Lock()
			if p.conn == c {
				p.conn = nil
			}
			p.mu.Unlock()
			c.Close()
			return
		}
		at := time.Now()
		ipa, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		src, ok := netip.AddrFromSlice(ipa.IP)
		if !ok {
			continue
		}
		src = src.Unmap()
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) && body.ID == int(p.id) {
				p.deliver(uint16(body.Seq), src, reply{at: at})
			}
		case *icmp.DstUnreach:
			p.icmpError(body.Data, src, fmt.Sprintf("unreachable (code %d)", m.Code), at)
		case *icmp.TimeExceeded:
			p.icmpError(body.Data, src, "TTL exceeded (routing loop?)", at)
		}
	}
}

// deliver hands a reply to the probe waiting for seq, when the reply comes
// from the address that probe asked.
func (p *pinger) deliver(seq uint16, dst netip.Addr, r reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.waiting[seq]
	if !ok || w.dst != dst {
		return
	}
	delete(p.waiting, seq)
	w.done <- r
}

// icmpError fails the probe whose request the error quotes: data is the
// start of our own echo request as the router that sent the error saw it.
func (p *pinger) icmpError(data []byte, from netip.Addr, what string, at time.Time) {
	var dst netip.Addr
	var echo []byte
	switch {
	case p.fam == inet.IPv4 && len(data) >= 20 && data[0]>>4 == 4 && data[9] == 1:
		ihl := int(data[0]&0x0f) * 4
		if ihl < 20 || len(data) < ihl+8 {
			return
		}
		dst = netip.AddrFrom4([4]byte(data[16:20]))
		echo = data[ihl:]
		if echo[0] != 8 {
			return
		}
	case p.fam == inet.IPv6 && len(data) >= 48 && data[0]>>4 == 6 && data[6] == 58:
		dst = netip.AddrFrom16([16]byte(data[24:40]))
		echo = data[40:]
		if echo[0] != 128 {
			return
		}
	default:
		return
	}
	if binary.BigEndian.Uint16(echo[4:6]) != p.id {
		return
	}
	seq := binary.BigEndian.Uint16(echo[6:8])
	err := &probeError{short: what + " from " + from.String(),
		long: fmt.Sprintf("icmp echo to %s: %s from %s", dst, what, from)}
	p.deliver(seq, dst, reply{at: at, err: err})
}
