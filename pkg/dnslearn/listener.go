package dnslearn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/florianl/go-nflog/v2"
	"golang.org/x/sys/unix"
)

// The NFLOG prefixes of the daemon's rules, which tell the Listener what
// a packet's rule did with it.
const (
	// PrefixHold marks a packet its rule dropped (UDP): the Listener
	// learns from it, then re-injects it.
	PrefixHold = "wanpin-dns-hold"
	// PrefixCopy marks a packet its rule let through (TCP): the Listener
	// only learns from it. A packet with any other prefix is treated as a
	// copy too, so that a foreign rule logging to the group never has its
	// packets duplicated.
	PrefixCopy = "wanpin-dns-copy"
)

// Options configure a Listener.
type Options struct {
	// NetNSFD is an open fd of the network namespace to work in (e.g. of
	// /run/netns/NAME); the caller keeps it open until Close. 0 or less:
	// the caller's namespace (fd 0 is stdin, never a namespace).
	NetNSFD int
	// Group is the NFLOG group of the rules, 1..65535 (0 is refused,
	// as a field left unset).
	Group uint16
	// Mark is the SO_MARK of the re-injection sockets, so the daemon's
	// rules can recognise re-injected packets (0: none).
	Mark uint32
	// Matcher is the first set of domains (nil: learn nothing until
	// SetMatcher).
	Matcher *Matcher
	// Handle is called with what a held or copied answer taught, from
	// one goroutine, before the held packet is re-injected. It must not
	// block for long (the LAN host's answer waits for it, and so do the
	// answers queued behind it) and must not call Close. A panic in it
	// is logged, and the answer re-injected all the same.
	Handle func([]Learned)
	// Logger gets the Listener's errors (nil: slog.Default()).
	Logger *slog.Logger
}

// Stats are a Listener's counters since Listen.
type Stats struct {
	Held           uint64 // packets of PrefixHold received
	Copied         uint64 // packets of PrefixCopy (or another prefix) received
	Reinjected     uint64 // held packets sent back (a fragmented one counts once)
	ReinjectErrors uint64 // held packets that could not be sent back: lost
	ParseErrors    uint64 // packets whose DNS message (or IP header) did not parse, or whose learning panicked
	Learned        uint64 // addresses learned (and handed to Handle)
	Overruns       uint64 // times the kernel's NFLOG queue overflowed: held packets lost
}

// Listener learns from the DNS answers of one NFLOG group and re-injects
// the held ones. Its methods are safe for concurrent use.
type Listener struct {
	opts    Options
	log     *slog.Logger
	matcher atomic.Pointer[Matcher]
	nl      *nflog.Nflog
	cancel  context.CancelFunc

	raw4, raw6 int // re-injection sockets (IPPROTO_RAW: header included)
	udp4, udp6 int // for route MTU look-ups (connect + IP_MTU)

	mu     sync.Mutex // held while a packet is handled; closed under it
	closed bool
	done   chan struct{}
	once   sync.Once
	err    atomic.Pointer[error]

	held, copied, reinjected, reinjectErrs, parseErrs, learned, overruns atomic.Uint64
}

// Listen binds to NFLOG group opts.Group and starts handling its packets
// in a goroutine of its own. Its raw sockets are opened inside the
// namespace opts.NetNSFD, as a socket routes in the namespace it was
// created in. It needs CAP_NET_ADMIN and CAP_NET_RAW. Only one Listener
// (one process) may bind a group in a namespace.
func Listen(opts Options) (*Listener, error) {
	if opts.Group == 0 {
		return nil, errors.New("dnslearn: NFLOG group 0 is the kernel's; choose another")
	}
	l := &Listener{opts: opts, log: opts.Logger, raw4: -1, raw6: -1, udp4: -1, udp6: -1, done: make(chan struct{})}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.log = l.log.With("nflog_group", opts.Group)
	l.matcher.Store(opts.Matcher)
	if err := inNetNS(opts.NetNSFD, l.openSockets); err != nil {
		l.closeSockets()
		return nil, err
	}
	cfg := nflog.Config{
		Group:    opts.Group,
		Copymode: nflog.CopyPacket,
		Bufsize:  0xffff, // the copy range; the rules' snaplen limits it too
		QThresh:  1,      // hand over every packet at once: the kernel's default waits for 100, or for 1 s
		Logger:   nflogLogger{l.log},
	}
	if opts.NetNSFD > 0 {
		cfg.NetNS = opts.NetNSFD
	}
	nl, err := nflog.Open(&cfg)
	if err != nil {
		l.closeSockets()
		return nil, fmt.Errorf("dnslearn: nflog: %w", err)
	}
	l.nl = nl
	// Room for a burst of answers of full size.
	if err := nl.Con.SetReadBuffer(4 << 20); err != nil {
		l.log.Warn("dnslearn: NFLOG read buffer", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	if err := nl.RegisterWithErrorFunc(ctx, l.hook, l.errFunc); err != nil {
		cancel()
		_ = nl.Close()
		l.closeSockets()
		return nil, fmt.Errorf("dnslearn: NFLOG group %d: %w", opts.Group, err)
	}
	return l, nil
}

func (l *Listener) openSockets() error {
	var err error
	if l.raw4, err = rawSocket(unix.AF_INET, l.opts.Mark); err != nil {
		return fmt.Errorf("dnslearn: raw IPv4 socket: %w", err)
	}
	if l.raw6, err = rawSocket(unix.AF_INET6, l.opts.Mark); err != nil {
		return fmt.Errorf("dnslearn: raw IPv6 socket: %w", err)
	}
	if l.udp4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("dnslearn: UDP socket: %w", err)
	}
	if l.udp6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("dnslearn: UDP6 socket: %w", err)
	}
	return nil
}

func rawSocket(family int, mark uint32) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, err
	}
	if family == unix.AF_INET6 {
		// IPPROTO_RAW implies it on Linux; say so anyway.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
			_ = unix.Close(fd)
			return -1, fmt.Errorf("IPV6_HDRINCL: %w", err)
		}
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			_ = unix.Close(fd)
			return -1, fmt.Errorf("SO_MARK: %w", err)
		}
	}
	return fd, nil
}

func (l *Listener) closeSockets() {
	for _, fd := range []*int{&l.raw4, &l.raw6, &l.udp4, &l.udp6} {
		if *fd >= 0 {
			_ = unix.Close(*fd)
			*fd = -1
		}
	}
}

// inNetNS runs f on a thread switched into the namespace fd (fd <= 0: f
// runs where the caller is). Sockets f creates stay in that namespace.
func inNetNS(fd int, f func() error) error {
	if fd <= 0 {
		return f()
	}
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("dnslearn: own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("dnslearn: setns: %w", err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and dies with its goroutine rather than
		// run other goroutines in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("dnslearn: setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// SetMatcher replaces the domains (nil: learn nothing); the next packet
// uses m.
func (l *Listener) SetMatcher(m *Matcher) { l.matcher.Store(m) }

// Stats returns the counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Held:           l.held.Load(),
		Copied:         l.copied.Load(),
		Reinjected:     l.reinjected.Load(),
		ReinjectErrors: l.reinjectErrs.Load(),
		ParseErrors:    l.parseErrs.Load(),
		Learned:        l.learned.Load(),
		Overruns:       l.overruns.Load(),
	}
}

// Done is closed when the Listener stops: by Close, or on an error
// reading NFLOG (then Err says which).
func (l *Listener) Done() <-chan struct{} { return l.done }

// Err is why the Listener stopped by itself, or nil.
func (l *Listener) Err() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops the Listener: once it returns, Handle is not called again
// and nothing more is re-injected. Held answers the kernel queued and the
// Listener did not read are lost, so the daemon should remove its hold
// rules first.
func (l *Listener) Close() error {
	l.cancel()
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if already {
		return nil
	}
	l.once.Do(func() { close(l.done) })
	err := l.nl.Close()
	l.mu.Lock()
	l.closeSockets()
	l.mu.Unlock()
	return err
}

func (l *Listener) errFunc(err error) int {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return 1
	}
	if errors.Is(err, unix.ENOBUFS) {
		n := l.overruns.Add(1)
		l.log.Warn("dnslearn: NFLOG queue overrun: held DNS answers lost", "overruns", n)
		return 0
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 1
	}
	l.stopLocked(fmt.Errorf("dnslearn: reading NFLOG: %w", err))
	return 1
}

func (l *Listener) stopLocked(err error) {
	l.once.Do(func() {
		l.err.Store(&err)
		l.log.Error("dnslearn: stopped", "err", err)
		close(l.done)
	})
}

func (l *Listener) hook(a nflog.Attribute) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 1
	}
	hold := a.Prefix != nil && *a.Prefix == PrefixHold
	if a.Payload == nil { // a rule or group without the packet copy: nothing to learn or re-inject
		if hold {
			l.held.Add(1)
			l.reinjectErrs.Add(1)
			l.log.Warn("dnslearn: held packet without its copy: lost")
		}
		return 0
	}
	defer func() {
		// A bug must not take the daemon down with it; the packet is lost.
		if r := recover(); r != nil {
			if hold {
				l.reinjectErrs.Add(1)
			}
			l.log.Error("dnslearn: panic while handling a packet", "len", len(*a.Payload), "panic", r)
		}
	}()
	l.handle(*a.Payload, hold)
	return 0
}

// handle learns from one packet and, if hold, re-injects it.
func (l *Listener) handle(b []byte, hold bool) {
	if hold {
		l.held.Add(1)
	} else {
		l.copied.Add(1)
	}
	p, err := parseIP(b)
	if err != nil {
		l.parseErrs.Add(1)
		if hold {
			l.log.Warn("dnslearn: held packet is not IP: dropped", "len", len(b))
			l.reinjectErrs.Add(1)
		}
		return
	}
	l.learnSafely(b, p)
	if hold {
		if err := l.reinject(b, p); err != nil {
			l.reinjectErrs.Add(1)
			l.log.Warn("dnslearn: re-injecting a DNS answer", "src", p.src, "dst", p.dst, "len", len(b), "err", err)
		} else {
			l.reinjected.Add(1)
		}
	}
}

// learnSafely is learn, with a panic (of Handle, or of a bug in the
// parsing) logged rather than fatal: the answer is re-injected anyway.
func (l *Listener) learnSafely(b []byte, p packet) {
	defer func() {
		if r := recover(); r != nil {
			l.parseErrs.Add(1)
			l.log.Error("dnslearn: panic while learning", "src", p.src, "dst", p.dst, "panic", r)
		}
	}()
	l.learn(b, p)
}

func (l *Listener) learn(b []byte, p packet) {
	var msgs [][]byte
	switch p.proto {
	case protoUDP:
		if m := p.udpPayload(b); m != nil {
			msgs = append(msgs, m)
		} else {
			l.parseErrs.Add(1)
			return
		}
	case protoTCP:
		// Whole messages only: a length prefix and all it announces.
		seg := p.tcpPayload(b)
		for len(seg) >= 2 {
			n := int(binary.BigEndian.Uint16(seg))
			if 2+n > len(seg) {
				break
			}
			msgs = append(msgs, seg[2:2+n])
			seg = seg[2+n:]
		}
		if len(msgs) == 0 {
			return // an ACK, or a part of a longer message
		}
	default:
		l.parseErrs.Add(1)
		return
	}
	m := l.matcher.Load()
	var all []Learned
	for _, msg := range msgs {
		got, err := Learn(msg, m)
		if err != nil {
			l.parseErrs.Add(1)
			l.log.Debug("dnslearn: unparsable DNS answer", "src", p.src, "dst", p.dst, "err", err)
			continue
		}
		all = append(all, got...)
	}
	if len(all) == 0 {
		return
	}
	// Counted once Handle has returned (or panicked): a reader that sees
	// the count sees what Handle did.
	defer l.learned.Add(uint64(len(all)))
	if l.opts.Handle != nil {
		l.opts.Handle(all)
	}
}

// reinject sends b, with its checksums made whole, to its destination
// through the raw socket of its family, fragmenting it when it is longer
// than the route's MTU (conntrack reassembled the fragments it came in).
func (l *Listener) reinject(b []byte, p packet) error {
	b = b[:p.l4end]
	fixChecksums(b, p)
	var (
		fd int
		sa unix.Sockaddr
	)
	if p.v6 {
		fd, sa = l.raw6, &unix.SockaddrInet6{Addr: p.dst.As16()}
	} else {
		fd, sa = l.raw4, &unix.SockaddrInet4{Addr: p.dst.As4()}
	}
	err := unix.Sendto(fd, b, 0, sa)
	if !errors.Is(err, unix.EMSGSIZE) {
		return err
	}
	mtu, merr := l.routeMTU(p)
	if merr != nil {
		return fmt.Errorf("%w (route MTU: %v)", err, merr)
	}
	var frags [][]byte
	if p.v6 {
		frags = fragment6(b, p, mtu, rand.Uint32())
	} else {
		frags = fragment4(b, p, mtu)
	}
	if frags == nil {
		return fmt.Errorf("%w: cannot fragment to MTU %d", err, mtu)
	}
	for _, f := range frags {
		if err := unix.Sendto(fd, f, 0, sa); err != nil {
			return fmt.Errorf("fragment of %d bytes (MTU %d): %w", len(f), mtu, err)
		}
	}
	return nil
}

// routeMTU is the MTU of the route to p.dst, from a UDP socket connected
// there (a connect of UDP only looks the route up).
func (l *Listener) routeMTU(p packet) (int, error) {
	fd, level, opt := l.udp4, unix.IPPROTO_IP, unix.IP_MTU
	var sa unix.Sockaddr
	if p.v6 {
		fd, level, opt = l.udp6, unix.IPPROTO_IPV6, unix.IPV6_MTU
		sa = &unix.SockaddrInet6{Port: 53, Addr: p.dst.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: 53, Addr: p.dst.As4()}
	}
	if l.opts.Mark != 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(l.opts.Mark))
	}
	if err := unix.Connect(fd, sa); err != nil {
		return 0, err
	}
	return unix.GetsockoptInt(fd, level, opt)
}

// nflogLogger hands go-nflog's messages to slog at debug level: its
// errors include the normal end of a Register at Close.
type nflogLogger struct{ l *slog.Logger }

func (n nflogLogger) Debugf(format string, args ...interface{}) {
	n.l.Debug("nflog: " + fmt.Sprintf(format, args...))
}

func (n nflogLogger) Errorf(format string, args ...interface{}) {
	n.l.Debug("nflog: " + fmt.Sprintf(format, args...))
}
