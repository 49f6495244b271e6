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
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socketControl gives every probe socket the uplink's mark, so policy
// routing sends it out of the uplink whatever the policies and balancer
// say (and wanpin's nftables leaves marked sockets alone), and binds it to
// the uplink's interface. The mark is what makes it work: with
// SO_BINDTODEVICE alone the kernel finds no gateway and ARPs for the
// remote address.
func socketControl(iface string, mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); serr != nil {
				serr = fmt.Errorf("SO_MARK: %w", serr)
				return
			}
			if iface != "" {
				if serr = unix.BindToDevice(int(fd), iface); serr != nil {
					serr = fmt.Errorf("SO_BINDTODEVICE %s: %w", iface, serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// prober probes one target once.
type prober func(ctx context.Context, target string) (time.Duration, error)

func newProber(method, iface string, mark uint32, dnsName string) prober {
	control := socketControl(iface, mark)
	switch method {
	case "tcp":
		return func(ctx context.Context, target string) (time.Duration, error) {
			d := net.Dialer{Control: control}
			start := time.Now()
			c, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				// A reset proves the path both ways: the ISP forwards.
				if errors.Is(err, syscall.ECONNREFUSED) {
					return time.Since(start), nil
				}
				return 0, err
			}
			c.Close()
			return time.Since(start), nil
		}
	case "http":
		return func(ctx context.Context, target string) (time.Duration, error) {
			d := net.Dialer{Control: control}
			tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			if err != nil {
				return 0, err
			}
			start := time.Now()
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				return 0, err
			}
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			return time.Since(start), nil
		}
	case "dns":
		return func(ctx context.Context, target string) (time.Duration, error) {
			return dnsProbe(ctx, control, target, dnsName)
		}
	}
	return func(ctx context.Context, target string) (time.Duration, error) {
		return icmpProbe(ctx, control, target)
	}
}

// icmpProbe sends one echo request on a raw socket of its own and waits
// for the matching reply. A raw socket sees all ICMP of the namespace, so
// the reply is recognised by source, identifier and sequence.
func icmpProbe(ctx context.Context, control func(string, string, syscall.RawConn) error, target string) (time.Duration, error) {
	dst, err := netip.ParseAddr(target)
	if err != nil {
		return 0, err
	}
	network, reqType, replyType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() {
		network, reqType, replyType = "ip6:ipv6-icmp", 128, 129
	}
	lc := net.ListenConfig{Control: control}
	conn, err := lc.ListenPacket(ctx, network, "")
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var idb [4]byte
	rand.Read(idb[:])
	id, seq := binary.BigEndian.Uint16(idb[:2]), binary.BigEndian.Uint16(idb[2:])
	msg := []byte{reqType, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'w', 'a', 'n', 'p', 'i', 'n', 0, 0}
	if dst.Is4() {
		// The kernel fills in the ICMPv6 checksum, not the ICMP one.
		cs := checksum(msg)
		msg[2], msg[3] = byte(cs>>8), byte(cs)
	}
	start := time.Now()
	if _, err := conn.WriteTo(msg, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, err
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if n < 8 || src.Unmap() != dst || buf[0] != replyType {
			continue
		}
		if binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return time.Since(start), nil
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// dnsProbe asks server for name (type NS); any well-formed answer with our
// id means the path works.
func dnsProbe(ctx context.Context, control func(string, string, syscall.RawConn) error, server, name string) (time.Duration, error) {
	if !strings.Contains(server, "]:") && strings.Count(server, ":") != 1 {
		server = net.JoinHostPort(strings.Trim(server, "[]"), "53")
	}
	d := net.Dialer{Control: control}
	conn, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var idb [2]byte
	rand.Read(idb[:])
	q := []byte{idb[0], idb[1], 1, 0, 0, 1, 0, 0, 0, 0, 0, 0} // RD, one question
	for _, label := range strings.Split(strings.Trim(name, "."), ".") {
		if label == "" {
			continue
		}
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0, 0, 2, 0, 1) // root end, QTYPE NS, QCLASS IN
	start := time.Now()
	if _, err := conn.Write(q); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return 0, err
		}
		if n >= 12 && buf[0] == idb[0] && buf[1] == idb[1] && buf[2]&0x80 != 0 {
			return time.Since(start), nil
		}
	}
}
