package dnslearn

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// packet is what the Listener needs of an IP packet from NFLOG.
type packet struct {
	v6     bool
	src    netip.Addr
	dst    netip.Addr
	proto  uint8 // transport protocol
	l4     int   // offset of the transport header
	l4end  int   // end of the transport segment (IP length, capped at the copy)
	ihl    int   // IPv4 header length; IPv6: offset of the last next-header field's header end (== l4)
	fragOK bool  // IPv6: only the fixed header before the transport header (fragmentable by us)
}

var errNotIP = errors.New("not an IPv4 or IPv6 packet")

const (
	protoTCP = 6
	protoUDP = 17
)

// parseIP reads the network header of b. A fragment (not the first, or
// with more to come) has proto 0: after conntrack's defragmentation the
// hold rule sees whole datagrams, so there is nothing else to parse.
func parseIP(b []byte) (packet, error) {
	var p packet
	if len(b) < 1 {
		return p, errNotIP
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, errNotIP
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || ihl > len(b) || total < ihl {
			return p, errNotIP
		}
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.ihl, p.l4 = ihl, ihl
		p.l4end = min(total, len(b))
		if binary.BigEndian.Uint16(b[6:8])&0x3fff == 0 { // neither MF nor an offset
			p.proto = b[9]
		}
		return p, nil
	case 6:
		if len(b) < 40 {
			return p, errNotIP
		}
		p.v6 = true
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dst = netip.AddrFrom16([16]byte(b[24:40]))
		p.l4end = min(40+int(binary.BigEndian.Uint16(b[4:6])), len(b))
		next, off := b[6], 40
		p.fragOK = true
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+8 > p.l4end {
					return p, nil
				}
				next, off = b[off], off+8*(int(b[off+1])+1)
				p.fragOK = false
				continue
			case 44: // a fragment
				return p, nil
			}
			break
		}
		if off > p.l4end {
			return p, nil
		}
		p.proto, p.l4, p.ihl = next, off, off
		return p, nil
	}
	return p, errNotIP
}

// udpPayload is the UDP payload of p in b, or nil.
func (p packet) udpPayload(b []byte) []byte {
	if p.proto != protoUDP || p.l4+8 > p.l4end {
		return nil
	}
	end := min(p.l4+int(binary.BigEndian.Uint16(b[p.l4+4:p.l4+6])), p.l4end)
	if end < p.l4+8 {
		return nil
	}
	return b[p.l4+8 : end]
}

// tcpPayload is the TCP payload of p in b, or nil.
func (p packet) tcpPayload(b []byte) []byte {
	if p.proto != protoTCP || p.l4+20 > p.l4end {
		return nil
	}
	off := p.l4 + int(b[p.l4+12]>>4)*4
	if off > p.l4end {
		return nil
	}
	return b[off:p.l4end]
}

// fixChecksums recomputes, in place, the IPv4 header checksum and the
// UDP checksum (with its pseudo-header) of a UDP packet: a packet that
// arrived over veth (or any device offloading checksums) may be
// CHECKSUM_PARTIAL, its UDP checksum field then holding only the
// pseudo-header's sum, which the receiver of a re-injected copy would
// reject. Other packets keep their transport checksum.
func fixChecksums(b []byte, p packet) {
	if !p.v6 {
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:12], ^fold(sum(b[:p.ihl], 0)))
	}
	if p.proto != protoUDP || p.l4+8 > p.l4end {
		return
	}
	udpLen := int(binary.BigEndian.Uint16(b[p.l4+4 : p.l4+6]))
	if udpLen < 8 || p.l4+udpLen > p.l4end {
		return // a length we cannot vouch for: leave it as it came
	}
	seg := b[p.l4 : p.l4+udpLen]
	seg[6], seg[7] = 0, 0
	var s uint32
	if p.v6 {
		s = sum(b[8:40], 0)
	} else {
		s = sum(b[12:20], 0)
	}
	s += protoUDP + uint32(udpLen)
	c := ^fold(sum(seg, s))
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in IPv4 and is invalid in IPv6
	}
	binary.BigEndian.PutUint16(seg[6:8], c)
}

// sum adds b as big-endian 16-bit words to s (RFC 1071).
func sum(b []byte, s uint32) uint32 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// fragment4 splits an IPv4 packet (header checksum not needed: fragments
// get their own) into fragments of at most mtu bytes. The DF bit is
// cleared: the router reassembled the datagram itself, and forwarding it
// would have fragmented it too, or the sender fragmented it already.
func fragment4(b []byte, p packet, mtu int) [][]byte {
	hdr := b[:p.ihl]
	data := b[p.ihl:p.l4end]
	step := (mtu - p.ihl) &^ 7
	if step <= 0 {
		return nil
	}
	var out [][]byte
	for off := 0; off < len(data); off += step {
		end := min(off+step, len(data))
		f := make([]byte, p.ihl+end-off)
		copy(f, hdr)
		copy(f[p.ihl:], data[off:end])
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		flags := uint16(off / 8)
		if end < len(data) {
			flags |= 0x2000 // MF
		}
		binary.BigEndian.PutUint16(f[6:8], flags)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:12], ^fold(sum(f[:p.ihl], 0)))
		out = append(out, f)
	}
	return out
}

// fragment6 splits an IPv6 packet with no extension header into
// fragments of at most mtu bytes, each with a fragment header of
// identification id.
func fragment6(b []byte, p packet, mtu int, id uint32) [][]byte {
	if !p.fragOK {
		return nil
	}
	data := b[40:p.l4end]
	step := (mtu - 48) &^ 7
	if step <= 0 {
		return nil
	}
	var out [][]byte
	for off := 0; off < len(data); off += step {
		end := min(off+step, len(data))
		f := make([]byte, 48+end-off)
		copy(f, b[:40])
		binary.BigEndian.PutUint16(f[4:6], uint16(len(f)-40))
		f[6] = 44
		f[40] = p.proto
		fo := uint16(off)
		if end < len(data) {
			fo |= 1 // M
		}
		binary.BigEndian.PutUint16(f[42:44], fo)
		binary.BigEndian.PutUint32(f[44:48], id)
		copy(f[48:], data[off:end])
		out = append(out, f)
	}
	return out
}
