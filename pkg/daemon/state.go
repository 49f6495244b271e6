package daemon

import (
	"fmt"
	"net/netip"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/plan"
	"github.com/wanpin/wanpin/pkg/watch"
)

// Observe turns what the kernel shows of an uplink's interface into the
// uplink's state, with a reason a person can read. It is pure.
//
// An uplink family is up when the interface exists, is up, has carrier and
// an address of that family, and a way to the internet is known: the
// configured gateway, the main table's default route through the interface
// (DHCP, router advertisements), or a point-to-point link (PPP).
func Observe(u config.Uplink, l watch.Link, h Hint) (plan.UplinkState, string) {
	var st plan.UplinkState
	if !l.Exists {
		return st, fmt.Sprintf("interface %s does not exist", u.Interface)
	}
	if h.Peer.IsValid() {
		// The PPP hook told us the peer, which the kernel may not show
		// (some PPPoE setups use a plain /32).
		l.Addrs = append([]watch.Addr(nil), l.Addrs...)
		for i, a := range l.Addrs {
			if a.Prefix.Addr().Is4() == h.Peer.Is4() && !a.Peer.IsValid() {
				l.Addrs[i].Peer = h.Peer
			}
		}
	}
	// Addresses are reported even while the link is down: the uplink's
	// `from` rules stay, so a socket bound to its address fails fast on
	// the unreachable route instead of leaking out of another uplink.
	v4, r4 := family(u, l, false)
	v6, r6 := family(u, l, true)
	switch {
	case h.Down:
		v4.Up, v6.Up = false, false
		st.V4, st.V6 = v4, v6
		return st, fmt.Sprintf("pppd ip-down for %s", u.Interface)
	case !l.AdminUp:
		v4.Up, v6.Up = false, false
		st.V4, st.V6 = v4, v6
		return st, fmt.Sprintf("interface %s is administratively down", u.Interface)
	case !l.Carrier:
		v4.Up, v6.Up = false, false
		st.V4, st.V6 = v4, v6
		return st, fmt.Sprintf("interface %s has no carrier", u.Interface)
	}
	st.V4, st.V6 = v4, v6
	switch {
	case v4.Up && v6.Up:
		return st, r4 + "; " + r6
	case v4.Up:
		return st, r4
	case v6.Up:
		return st, r6
	}
	return st, r4
}

// Hint is what PPP hooks told the daemon about an interface: the peer
// address from ip-up, and ip-down (the link is going away; netlink will
// confirm it a moment later). A hint lives until the interface is
// re-created with a new index or the opposite event arrives.
type Hint struct {
	Index int // the ifindex the hint was given for (0: whatever exists)
	Peer  netip.Addr
	Down  bool
}

func family(u config.Uplink, l watch.Link, v6 bool) (plan.FamilyState, string) {
	var fs plan.FamilyState
	name := "IPv4"
	if v6 {
		name = "IPv6"
	}
	var peer netip.Addr
	for _, a := range l.Addrs {
		if a.Prefix.Addr().Is6() != v6 {
			continue
		}
		fs.Addrs = append(fs.Addrs, a.Prefix.Addr())
		if a.Peer.IsValid() && !peer.IsValid() {
			peer = a.Peer
		}
	}
	if len(fs.Addrs) == 0 {
		return fs, fmt.Sprintf("no %s address on %s", name, u.Interface)
	}
	learned, defaultDev := l.Gateway4, l.DefaultDev4
	if v6 {
		learned, defaultDev = l.Gateway6, l.DefaultDev6
	}
	var how string
	switch {
	case u.Gateway.IsValid() && u.Gateway.Is6() == v6:
		fs.Gateway, how = u.Gateway, "configured gateway "+u.Gateway.String()
		fs.OnLink = l.PointToPoint || peer.IsValid()
	case peer.IsValid() && l.PointToPoint:
		// PPP: the peer is on the other end of the wire, a device route
		// reaches it; no neighbour resolution is involved.
		fs.PointToPoint, how = true, "point-to-point peer "+peer.String()
	case peer.IsValid():
		// A peer address on a broadcast link: route via the peer, which
		// no connected route covers.
		fs.Gateway, fs.OnLink, how = peer, true, "peer "+peer.String()
	case learned.IsValid():
		fs.Gateway, how = learned, "gateway "+learned.String()+" from the main table"
	case l.PointToPoint || defaultDev:
		fs.PointToPoint, how = true, "point-to-point link"
	default:
		return fs, fmt.Sprintf("no %s gateway known for %s (configure gateway, or let DHCP install a default route)", name, u.Interface)
	}
	fs.Up = true
	return fs, fmt.Sprintf("%s %s, %s", name, fs.Addrs[0], how)
}

// AssumeUp is the state `wanpin plan --all-up` pretends an uplink has:
// up, with its configured gateway or as a point-to-point link, and no
// address known.
func AssumeUp(u config.Uplink) plan.UplinkState {
	fs := plan.FamilyState{Up: true, Gateway: u.Gateway, PointToPoint: !u.Gateway.IsValid()}
	if u.Gateway.IsValid() && u.Gateway.Is6() {
		return plan.UplinkState{V6: fs}
	}
	return plan.UplinkState{V4: fs}
}
