package dnslearn

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"
)

// udp4 builds an IPv4 UDP packet with zero checksums.
func udp4(src, dst string, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[8], b[9] = 0x45, 64, protoUDP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	copy(b[12:], netip.MustParseAddr(src).AsSlice())
	copy(b[16:], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload)
	return b
}

func udp6(src, dst string, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	b[0], b[6], b[7] = 0x60, protoUDP, 64
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	copy(b[8:], netip.MustParseAddr(src).AsSlice())
	copy(b[24:], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(b[40:], sport)
	binary.BigEndian.PutUint16(b[42:], dport)
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

func TestChecksums(t *testing.T) {
	// The checksums computed independently (RFC 1071, by hand in Python)
	// for 203.0.113.53:53 -> 198.51.100.2:40000, "hello".
	want, _ := hex.DecodeString("45000021000000004011" + "1461" + "cb007135c6336402" + "00359c40000d" + "b920" + "68656c6c6f")
	b := udp4("203.0.113.53", "198.51.100.2", 53, 40000, []byte("hello"))
	binary.BigEndian.PutUint16(b[26:], 0x1234) // as CHECKSUM_PARTIAL leaves it: not final
	p, err := parseIP(b)
	if err != nil {
		t.Fatal(err)
	}
	fixChecksums(b, p)
	if !bytes.Equal(b, want) {
		t.Errorf("IPv4:\n got %x\nwant %x", b, want)
	}

	b6 := udp6("2001:db8:53::1", "2001:db8:1::2", 53, 40000, []byte("hello"))
	p6, err := parseIP(b6)
	if err != nil {
		t.Fatal(err)
	}
	fixChecksums(b6, p6)
	// The sum over the pseudo-header and the segment, checksum included, is 0xffff.
	s := sum(b6[8:40], protoUDP+uint32(len(b6)-40))
	if got := fold(sum(b6[40:], s)); got != 0xffff {
		t.Errorf("IPv6 UDP checksum does not verify: %#x (%x)", got, b6)
	}
	if odd := udp6("2001:db8:53::1", "2001:db8:1::2", 53, 40000, []byte("hello!?")); true {
		p, _ := parseIP(odd)
		fixChecksums(odd, p)
		s := sum(odd[8:40], protoUDP+uint32(len(odd)-40))
		if got := fold(sum(odd[40:], s)); got != 0xffff {
			t.Errorf("IPv6 UDP checksum (odd length) does not verify: %#x", got)
		}
	}
}

func TestParseIP(t *testing.T) {
	b := udp4("203.0.113.53", "198.51.100.2", 53, 40000, []byte("hello"))
	p, err := parseIP(append(b, 0, 0, 0)) // trailing padding is not payload
	if err != nil {
		t.Fatal(err)
	}
	if p.src.String() != "203.0.113.53" || p.dst.String() != "198.51.100.2" || string(p.udpPayload(b)) != "hello" {
		t.Errorf("parsed %+v, payload %q", p, p.udpPayload(b))
	}
	frag := append([]byte{}, b...)
	frag[6] = 0x20 // MF
	if p, _ := parseIP(frag); p.proto != 0 {
		t.Errorf("a fragment parsed as protocol %d", p.proto)
	}
	for _, bad := range [][]byte{nil, {0x45}, b[:19], {0x12, 0, 0, 0}} {
		if _, err := parseIP(bad); err == nil {
			t.Errorf("parseIP(%x) did not fail", bad)
		}
	}
	b6 := udp6("2001:db8:53::1", "2001:db8:1::2", 53, 40000, []byte("hello"))
	p6, err := parseIP(b6)
	if err != nil || !p6.v6 || string(p6.udpPayload(b6)) != "hello" || !p6.fragOK {
		t.Errorf("IPv6 parsed %+v, %v", p6, err)
	}
}

func TestFragment(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 200) // 3200 bytes
	b := udp4("203.0.113.53", "198.51.100.2", 53, 40000, payload)
	p, _ := parseIP(b)
	fixChecksums(b, p)
	frags := fragment4(b, p, 1500)
	if len(frags) != 3 {
		t.Fatalf("%d fragments, want 3", len(frags))
	}
	var data []byte
	for i, f := range frags {
		if len(f) > 1500 || int(binary.BigEndian.Uint16(f[2:])) != len(f) {
			t.Errorf("fragment %d: %d bytes, length field %d", i, len(f), binary.BigEndian.Uint16(f[2:]))
		}
		fo := binary.BigEndian.Uint16(f[6:])
		if int(fo&0x1fff)*8 != len(data) || (fo&0x2000 != 0) != (i < len(frags)-1) {
			t.Errorf("fragment %d: flags/offset %#x", i, fo)
		}
		if fold(sum(f[:20], 0)) != 0xffff {
			t.Errorf("fragment %d: bad header checksum", i)
		}
		data = append(data, f[20:]...)
	}
	if !bytes.Equal(data, b[20:]) {
		t.Error("IPv4 fragments do not add up to the datagram")
	}

	b6 := udp6("2001:db8:53::1", "2001:db8:1::2", 53, 40000, payload)
	p6, _ := parseIP(b6)
	frags = fragment6(b6, p6, 1280, 0xabcd)
	data = nil
	for i, f := range frags {
		if len(f) > 1280 || int(binary.BigEndian.Uint16(f[4:]))+40 != len(f) || f[6] != 44 || f[40] != protoUDP {
			t.Errorf("IPv6 fragment %d: bad header %x", i, f[:48])
		}
		fo := binary.BigEndian.Uint16(f[42:])
		if int(fo&^7) != len(data) || (fo&1 != 0) != (i < len(frags)-1) || binary.BigEndian.Uint32(f[44:]) != 0xabcd {
			t.Errorf("IPv6 fragment %d: offset/M %#x", i, fo)
		}
		data = append(data, f[48:]...)
	}
	if !bytes.Equal(data, b6[40:]) {
		t.Error("IPv6 fragments do not add up to the datagram")
	}
}

func FuzzPacket(f *testing.F) {
	f.Add(udp4("203.0.113.53", "198.51.100.2", 53, 40000, []byte("hello")))
	f.Add(udp6("2001:db8:53::1", "2001:db8:1::2", 53, 40000, []byte("hello")))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseIP(b)
		if err != nil {
			return
		}
		p.udpPayload(b)
		p.tcpPayload(b)
		c := append([]byte(nil), b...)
		fixChecksums(c, p)
		if p.v6 {
			fragment6(c, p, 1280, 1)
		} else {
			fragment4(c, p, 576)
		}
	})
}
