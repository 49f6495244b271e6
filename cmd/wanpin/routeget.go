package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/policy"
)

// kernelRouteDev asks the kernel (RTM_GETROUTE, as `ip route get` does)
// where a packet of the flow with this mark goes, through the rules and
// tables wanpin installed, and returns the route as ip prints it and its
// output interface.
//
// The request carries the flow's protocol and ports, which
// vishvananda/netlink's RouteGetWithOptions (v1.3.1) cannot send: the
// kernel's IPv6 multipath hash covers the next header as well as the
// addresses (fib_multipath_hash_policy 0), so without it the kernel
// answers for another flow than this one (measured: the router's own UDP
// to the server left by isp1 while a protocol-less lookup said isp2).
// The library's nl package builds the message and splits the answer.
func kernelRouteDev(f policy.Flow, mark uint32) (string, string) {
	family, bits := unix.AF_INET, uint8(32)
	if f.Dst.Is6() && !f.Dst.Is4In6() {
		family, bits = unix.AF_INET6, 128
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_REQUEST)
	msg := &nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(family), Dst_len: bits, Flags: unix.RTM_F_LOOKUP_TABLE}}
	// A source only with the input interface: an output lookup (no iif)
	// from an address that is not the router's fails.
	withSrc := !f.Local && f.InIface != "" && f.Src.IsValid()
	if withSrc {
		msg.Src_len = bits
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, f.Dst.Unmap().AsSlice()))
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	if f.Local {
		req.AddData(nl.NewRtAttr(unix.RTA_UID, u32(f.UID)))
	} else if f.InIface != "" {
		link, err := netlink.LinkByName(f.InIface)
		if err != nil {
			return "error: " + err.Error(), ""
		}
		req.AddData(nl.NewRtAttr(unix.RTA_IIF, u32(uint32(link.Attrs().Index))))
		if withSrc {
			req.AddData(nl.NewRtAttr(unix.RTA_SRC, f.Src.Unmap().AsSlice()))
		}
	}
	if mark != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_MARK, u32(mark)))
	}
	if f.Proto != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_IP_PROTO, []byte{f.Proto}))
		if f.Proto == policy.ProtoTCP || f.Proto == policy.ProtoUDP {
			// Ports in network order; the kernel takes them only with a
			// protocol that has them.
			if f.SPort != 0 {
				req.AddData(nl.NewRtAttr(unix.RTA_SPORT, binary.BigEndian.AppendUint16(nil, f.SPort)))
			}
			if f.DPort != 0 {
				req.AddData(nl.NewRtAttr(unix.RTA_DPORT, binary.BigEndian.AppendUint16(nil, f.DPort)))
			}
		}
	}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
	if err != nil {
		return "error: " + err.Error(), ""
	}
	if len(msgs) == 0 {
		return "no route", ""
	}
	return describeRoute(msgs[0])
}

// describeRoute prints one RTM_NEWROUTE answer as `dev D via G src S
// table T`, and returns D.
func describeRoute(m []byte) (string, string) {
	rt := nl.DeserializeRtMsg(m)
	attrs, err := nl.ParseRouteAttr(m[rt.Len():])
	if err != nil {
		return "error: " + err.Error(), ""
	}
	var dev, via, src string
	table := uint32(rt.Table)
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_OIF:
			if link, err := netlink.LinkByIndex(int(binary.NativeEndian.Uint32(a.Value))); err == nil {
				dev = link.Attrs().Name
			}
		case unix.RTA_GATEWAY:
			via = net.IP(a.Value).String()
		case unix.RTA_PREFSRC:
			src = net.IP(a.Value).String()
		case unix.RTA_TABLE:
			table = binary.NativeEndian.Uint32(a.Value)
		}
	}
	var parts []string
	if dev != "" {
		parts = append(parts, "dev "+dev)
	}
	if via != "" {
		parts = append(parts, "via "+via)
	}
	if src != "" {
		parts = append(parts, "src "+src)
	}
	if table != 0 {
		parts = append(parts, fmt.Sprintf("table %d", table))
	}
	return strings.Join(parts, " "), dev
}
