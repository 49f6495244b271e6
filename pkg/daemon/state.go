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
func Observe(u config.Uplink, l watch.Link, h Hint) (plan.UplinkState, Reasons) {
	var st plan.UplinkState
	both := func(r string) Reasons { return Reasons{V4: r, V6: r} }
	if !l.Exists {
		return st, both(fmt.Sprintf("interface %s does not exist", u.Interface))
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
		return st, both(fmt.Sprintf("pppd ip-down for %s", u.Interface))
	case !l.AdminUp:
		v4.Up, v6.Up = false, false
		st.V4, st.V6 = v4, v6
		return st, both(fmt.Sprintf("interface %s is administratively down", u.Interface))
	case !l.Carrier:
		v4.Up, v6.Up = false, false
		st.V4, st.V6 = v4, v6
		return st, both(fmt.Sprintf("interface %s has no carrier", u.Interface))
	}
	st.V4, st.V6 = v4, v6
	return st, Reasons{V4: r4, V6: r6}
}

// Reasons says, per family, why it is up or down.
type Reasons struct{ V4, V6 string }

func (r *Reasons) of(v6 bool) *string {
	if v6 {
		return &r.V6
	}
	return &r.V4
}

// String is the uplink's reason in one line: the one reason when both
// families share it, else both.
func (r Reasons) String(st plan.UplinkState) string {
	switch {
	case r.V4 == r.V6:
		return r.V4
	case st.V4.Up && !st.V6.Up && len(st.V6.Addrs) == 0 && !st.V6.Unhealthy:
		// IPv4-only uplinks are common: no need to say "no IPv6" each time.
		return r.V4
	case st.V6.Up && !st.V4.Up && len(st.V4.Addrs) == 0:
		return r.V6
	}
	return r.V4 + "; " + r.V6
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
	learned, defaultDev, configured := l.Gateway4, l.DefaultDev4, u.Gateway4
	if v6 {
		learned, defaultDev, configured = l.Gateway6, l.DefaultDev6, u.Gateway6
	}
	var how string
	switch {
	case configured.IsValid():
		fs.Gateway, how = configured, "configured gateway "+configured.String()
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
// address known. IPv6 is assumed up with a configured gateway6, or as a
// point-to-point link where IPv4 is one too (PPP); an uplink with only an
// IPv4 gateway configured learns its IPv6 router at run time, which a plan
// cannot guess.
func AssumeUp(u config.Uplink) plan.UplinkState {
	st := plan.UplinkState{V4: plan.FamilyState{Up: true, Gateway: u.Gateway4, PointToPoint: !u.Gateway4.IsValid()}}
	if u.Gateway6.IsValid() || !u.Gateway4.IsValid() {
		st.V6 = plan.FamilyState{Up: true, Gateway: u.Gateway6, PointToPoint: !u.Gateway6.IsValid()}
	}
	return st
}
