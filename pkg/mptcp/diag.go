package mptcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Counts is what sock_diag tells about MPTCP in one namespace.
type Counts struct {
	// Subflows: established TCP sockets whose ULP is "mptcp", by local
	// address (IPv4-mapped IPv6 addresses unmapped).
	Subflows map[netip.Addr]int
	// Connections: established MPTCP sockets (msk), each the parent of
	// one or more subflows.
	Connections int
}

// sock_diag constants x/sys/unix lacks (include/uapi/linux/inet_diag.h).
const (
	inetDiagULPInfo = 19 // INET_DIAG_ULP_INFO, nested
	ulpInfoName     = 1  // INET_ULP_INFO_NAME, string
	ipprotoMPTCP    = 262
	inetDiagInfo    = 2 // INET_DIAG_INFO, the extension bit asked for
	reqProtocol     = 3 // INET_DIAG_REQ_PROTOCOL, u32

	inetDiagReqLen = 56 // struct inet_diag_req_v2
	inetDiagMsgLen = 72 // struct inet_diag_msg
)

// Count dumps the TCP and MPTCP sockets of the namespace netnsFD refers
// to (0: the caller's own). A subflow is a TCP socket like any other in
// the dump; only its ULP attribute ("mptcp", reported to unprivileged
// callers too, measured on 6.18) tells it from plain TCP.
func Count(netnsFD int) (Counts, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return Counts{}, fmt.Errorf("counting MPTCP subflows: opening sock_diag: %w", err)
	}
	defer c.Close()
	n := Counts{Subflows: map[netip.Addr]int{}}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := dumpSockets(c, family, unix.IPPROTO_TCP, func(local netip.Addr, attrs []byte) {
			if isMPTCPSubflow(attrs) {
				n.Subflows[local]++
			}
		})
		if err != nil {
			return Counts{}, fmt.Errorf("counting MPTCP subflows: %w", err)
		}
		err = dumpSockets(c, family, ipprotoMPTCP, func(netip.Addr, []byte) { n.Connections++ })
		if err != nil {
			return Counts{}, fmt.Errorf("counting MPTCP connections: %w", err)
		}
	}
	return n, nil
}

// dumpSockets calls f with the local address and the attributes of each
// established socket of one family and protocol.
func dumpSockets(c *netlink.Conn, family uint8, proto int, f func(netip.Addr, []byte)) error {
	req := make([]byte, inetDiagReqLen)
	req[0] = family
	req[1] = uint8(proto)
	req[2] = 1 << (inetDiagInfo - 1)
	binary.NativeEndian.PutUint32(req[4:], 1<<unix.BPF_TCP_ESTABLISHED)
	if proto > 0xff {
		// The request's protocol is a u8: IPPROTO_MPTCP (262) is asked
		// for with an attribute instead.
		req[1] = 0
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(reqProtocol, uint32(proto))
		b, err := ae.Encode()
		if err != nil {
			return err
		}
		req = append(req, b...)
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return fmt.Errorf("sock_diag dump of family %d protocol %d: %w", family, proto, err)
	}
	for _, m := range msgs {
		if len(m.Data) < inetDiagMsgLen {
			continue
		}
		// inet_diag_sockid starts at byte 4: sport, dport, src[16], ...
		var local netip.Addr
		if m.Data[0] == unix.AF_INET {
			local = netip.AddrFrom4([4]byte(m.Data[8:12]))
		} else {
			local = netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap()
		}
		f(local, m.Data[inetDiagMsgLen:])
	}
	return nil
}

func isMPTCPSubflow(attrs []byte) bool {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return false
	}
	found := false
	for ad.Next() {
		if ad.Type() != inetDiagULPInfo {
			continue
		}
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			for nad.Next() {
				if nad.Type() == ulpInfoName && nad.String() == "mptcp" {
					found = true
				}
			}
			return nil
		})
	}
	return found && ad.Err() == nil
}
