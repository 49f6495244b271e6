package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// ctCounter counts conntrack entries by mark with one ctnetlink dump read
// through a fixed buffer, looking at nothing but each entry's CTA_MARK.
//
// Why not pkg/flush's CountByMark (ti-mo/conntrack's Dump): that decodes
// every entry into a Flow and holds them all until the count is done. At
// 200,000 entries a count took the daemon's resident memory from 15 MB to
// about 300 MB and most of its CPU went to the decoding; this one
// allocates nothing per entry, and what a count costs is the kernel's part
// (see BenchmarkCountByMark200k for the figures).
type ctCounter struct {
	mu     sync.Mutex
	fd     int // -1: to be opened again (after an error), see CountByMark
	closed bool
	seq    uint32
	buf    []byte
}

// ctnetlink's numbers (linux/netfilter/nfnetlink_conntrack.h), not in
// x/sys/unix.
const (
	ipctnlMsgCtGet = 1
	ctaMark        = 8
	nlaTypeMask    = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
	// ctBufSize is what one read takes: the kernel fills a dump message
	// batch of up to 32 KiB when the reader's buffer is that big.
	ctBufSize = 64 << 10
)

// newCTCounter opens a ctnetlink socket in the calling thread's network
// namespace.
func newCTCounter() (*ctCounter, error) {
	fd, err := openCT()
	if err != nil {
		return nil, err
	}
	return &ctCounter{fd: fd, buf: make([]byte, ctBufSize)}, nil
}

func openCT() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("opening a ctnetlink socket: %w", err)
	}
	// A dump never blocks for long; the bound keeps a kernel that stops
	// answering from holding the counter for ever.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ctnetlink socket: receive timeout: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("binding a ctnetlink socket: %w", err)
	}
	return fd, nil
}

func (c *ctCounter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// CountByMark counts the entries of every family per (ct mark & mask),
// leaving out mark 0 (not pinned). An entry created or deleted during the
// dump may be counted or not: a count is a figure for status, never a
// decision.
func (c *ctCounter) CountByMark(mask uint32) (map[uint32]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("counting conntrack entries: counter closed")
	}
	if c.fd < 0 {
		fd, err := openCT()
		if err != nil {
			return nil, err
		}
		c.fd = fd
	}
	out, err := c.dump(mask)
	if err != nil {
		// What is left of a broken dump would answer the next request
		// (or make the kernel refuse it as busy): start afresh.
		unix.Close(c.fd)
		c.fd = -1
	}
	return out, err
}

func (c *ctCounter) dump(mask uint32) (map[uint32]int, error) {
	c.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], c.seq)
	req[16] = unix.AF_UNSPEC // nfgenmsg: every family, version 0, resource 0
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("asking conntrack for its entries: %w", err)
	}
	out := map[uint32]int{}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading conntrack's entries: %w", err)
		}
		done, err := countBatch(c.buf[:n], c.seq, mask, out)
		if err != nil {
			return nil, err
		}
		if done {
			return out, nil
		}
	}
}

// countBatch adds the marks of one read's messages to out; done is true
// at the dump's end.
func countBatch(b []byte, seq, mask uint32, out map[uint32]int) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, fmt.Errorf("reading conntrack's entries: message of %d bytes in a read of %d", l, len(b))
		}
		msg := b[unix.NLMSG_HDRLEN:l]
		if next := nlmAlign(l); next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		if mseq != seq {
			continue // an answer to an earlier, abandoned dump
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(msg) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(msg[0:4])); e != 0 {
					return false, fmt.Errorf("reading conntrack's entries: %w", unix.Errno(-e))
				}
			}
			continue
		}
		if len(msg) < 4 {
			continue
		}
		if m := markOf(msg[4:]) & mask; m != 0 {
			out[m]++
		}
	}
	return false, nil
}

// markOf finds CTA_MARK among an entry's top-level attributes (0: none).
func markOf(attrs []byte) uint32 {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4]) & nlaTypeMask
		if l < 4 || l > len(attrs) {
			return 0
		}
		if typ == ctaMark && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:8])
		}
		next := (l + 3) &^ 3
		if next >= len(attrs) {
			return 0
		}
		attrs = attrs[next:]
	}
	return 0
}

func nlmAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
