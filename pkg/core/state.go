package core

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/inet"
)

// FamilyState is what wanpin observed of one address family of an uplink.
type FamilyState struct {
	Up    bool         // usable: link up, an address, a way to the gateway
	Addrs []netip.Addr // the uplink's own addresses of this family
	// NAT is the address traffic leaving through the uplink is translated
	// to: its primary address (not secondary, temporary or deprecated,
	// when there is such a one).
	NAT     netip.Addr
	Gateway netip.Addr // configured or learned; invalid on point-to-point
	// PointToPoint: no gateway is needed (`default dev ppp0`).
	PointToPoint bool
	// OnLink: the gateway is configured on a point-to-point link, where no
	// connected route covers it.
	OnLink bool
	// Unhealthy: the family is up but its health probes fail (or the
	// admin took the uplink out of service). Its routes stay (the probes
	// need them), but it carries no new connections of this family.
	Unhealthy bool
	// DNS: the uplink's resolvers of this family (configured, or from a
	// DHCP lease or PPP's usepeerdns). The router's queries to them leave
	// through this uplink, whatever the balancer does.
	DNS []netip.Addr
}

// Usable reports whether the family can carry new connections.
func (f FamilyState) Usable() bool { return f.Up && !f.Unhealthy }

// UplinkState is the observed state of one uplink: each address family is
// up or down on its own.
type UplinkState struct {
	Families inet.PerFamily[FamilyState]
	// Exhausted: its data quota is used up (quota_action =
	// "last-resort"): it carries new connections only while no other
	// uplink can.
	Exhausted bool
}

// Family returns the state of one family.
func (s UplinkState) Family(f inet.Family) FamilyState { return s.Families.Get(f) }

// Of returns the state of one family for changing it.
func (s *UplinkState) Of(f inet.Family) *FamilyState { return s.Families.Of(f) }

// LinkUp reports whether the uplink's link can carry traffic at all.
func (s UplinkState) LinkUp() bool {
	return s.Family(inet.IPv4).Up || s.Family(inet.IPv6).Up
}

// Up reports whether the uplink can carry new connections of some family.
func (s UplinkState) Up() bool {
	return s.Family(inet.IPv4).Usable() || s.Family(inet.IPv6).Usable()
}

// Gatewayless: the interface has addresses but no way to a gateway in
// either family: not point-to-point, none configured, leased or in the
// main table. A LAN interface named as an uplink by mistake looks so
// (desired.Uplink.NoGateway).
func (s UplinkState) Gatewayless() bool {
	addrs := false
	for _, f := range inet.Families {
		fs := s.Family(f)
		if len(fs.Addrs) > 0 && (fs.Gateway.IsValid() || fs.PointToPoint) {
			return false
		}
		addrs = addrs || len(fs.Addrs) > 0
	}
	return addrs
}

// Addrs is every address of the uplink, IPv4 first.
func (s UplinkState) Addrs() []netip.Addr {
	return append(append([]netip.Addr(nil), s.Family(inet.IPv4).Addrs...), s.Family(inet.IPv6).Addrs...)
}

// SetUnhealthy marks both families that are up as unhealthy.
func (s *UplinkState) SetUnhealthy() {
	for _, f := range inet.Families {
		s.Of(f).Unhealthy = s.Of(f).Up
	}
}

// Reasons says, per family, why it is up or down.
type Reasons = inet.PerFamily[string]

// oneReason is the uplink's reason in one line: the one reason when both
// families share it, else both.
func oneReason(r Reasons, st UplinkState) string {
	v4, v6 := st.Family(inet.IPv4), st.Family(inet.IPv6)
	r4, r6 := r.Get(inet.IPv4), r.Get(inet.IPv6)
	switch {
	case r4 == r6:
		return r4
	case v4.Up && !v6.Up && len(v6.Addrs) == 0 && !v6.Unhealthy:
		// IPv4-only uplinks are common: no need to say "no IPv6" each time.
		return r4
	case v6.Up && !v4.Up && len(v4.Addrs) == 0:
		return r6
	}
	return r4 + "; " + r6
}

// Hint is what PPP hooks told the daemon about an interface: the peer
// address and DNS servers from ip-up, and ip-down (the link is going
// away; netlink will confirm it a moment later). A hint lives until the
// interface is re-created with a new index or the opposite event arrives;
// an ip-down the kernel has not confirmed within DownHintHold, no longer
// (see State.hint).
type Hint struct {
	Index int // the ifindex the hint was given for (0: whatever exists)
	Peer  netip.Addr
	DNS   []netip.Addr
	Down  bool
	Since time.Time // when the ip-down came
}

// DownHintHold is how long an ip-down outranks what the kernel shows.
// pppd runs ip-down as the session ends, and the kernel shows the end
// (the interface goes, or loses its address) once LCP's terminate
// exchange is over: at most lcp-max-terminate (3) times lcp-restart
// (3 s) by default, 9 s. An ip-down that nothing confirms by then was a
// stray one (a hook run by hand, a misfire, pppd's demand mode keeping
// the interface): the kernel's view stands again, and the health probes
// judge the link.
const DownHintHold = 10 * time.Second

// Lease is what a DHCP client's hook reported for one family of an
// interface: the address it leased, the routers and the DNS servers. It
// stands while the interface holds that address, so a link flap (after
// which dhclient never re-adds its default route) does not lose the
// gateway; a lease-lost event ends it.
type Lease struct {
	Address  netip.Prefix
	Gateways []netip.Addr
	DNS      []netip.Addr
	Client   string // dhclient, dhcpcd, NetworkManager
}

// LeaseKey names one family of one interface.
type LeaseKey struct {
	Interface string
	Family    inet.Family
}

// Observe turns what the kernel shows of an uplink's interface into the
// uplink's state, with a reason a person can read per family.
//
// An uplink family is up when the interface exists, is up, has carrier and
// an address of that family, and a way to the internet is known: the
// configured gateway, the main table's default route through the interface
// (DHCP, router advertisements), or a point-to-point link (PPP).
func Observe(u config.Uplink, l Link, h Hint, leases map[inet.Family]Lease) (UplinkState, Reasons) {
	st, rs := observe(u, l, h, leases)
	// Resolvers: configured, then the lease's, then PPP's; each in its
	// own family. Known whether the link is up or not: the router's
	// queries to them must fail at once while it is down, not wander off
	// through another ISP that they do not answer.
	for _, f := range inet.Families {
		fs := st.Of(f)
		for _, list := range [][]netip.Addr{u.DNS, leases[f].DNS, h.DNS} {
			for _, a := range list {
				if inet.Of(a) == f && !slices.Contains(fs.DNS, a) {
					fs.DNS = append(fs.DNS, a)
				}
			}
		}
	}
	return st, rs
}

func observe(u config.Uplink, l Link, h Hint, leases map[inet.Family]Lease) (UplinkState, Reasons) {
	var st UplinkState
	both := func(r string) Reasons { return Reasons{r, r} }
	if !l.Exists {
		return st, both(fmt.Sprintf("interface %s does not exist", u.Interface))
	}
	if h.Peer.IsValid() {
		// The PPP hook told us the peer, which the kernel may not show
		// (some PPPoE setups use a plain /32).
		l.Addrs = append([]Addr(nil), l.Addrs...)
		for i, a := range l.Addrs {
			if inet.OfPrefix(a.Prefix) == inet.Of(h.Peer) && !a.Peer.IsValid() {
				l.Addrs[i].Peer = h.Peer
			}
		}
	}
	// Addresses are reported even while the link is down: the other
	// uplinks translate the router's packets that still carry them
	// (foreignAddrMasq), and a lost one's entries are flushed.
	var rs Reasons
	for _, f := range inet.Families {
		lease, hasLease := leases[f]
		*st.Of(f), *rs.Of(f) = family(u, l, f, lease, hasLease)
	}
	down := ""
	switch {
	case h.Down:
		down = fmt.Sprintf("pppd ip-down for %s", u.Interface)
	case !l.AdminUp:
		down = fmt.Sprintf("interface %s is administratively down", u.Interface)
	case !l.Carrier:
		down = fmt.Sprintf("interface %s has no carrier", u.Interface)
	}
	if down != "" {
		for _, f := range inet.Families {
			st.Of(f).Up = false
		}
		return st, both(down)
	}
	return st, rs
}

func family(u config.Uplink, l Link, f inet.Family, lease Lease, hasLease bool) (FamilyState, string) {
	var fs FamilyState
	var peer netip.Addr
	for _, a := range l.Addrs {
		if inet.OfPrefix(a.Prefix) != f {
			continue
		}
		fs.Addrs = append(fs.Addrs, a.Prefix.Addr())
		if a.Peer.IsValid() && !peer.IsValid() {
			peer = a.Peer
		}
		if !fs.NAT.IsValid() && !a.Secondary && !a.Deprecated {
			fs.NAT = a.Prefix.Addr()
		}
	}
	if !fs.NAT.IsValid() && len(fs.Addrs) > 0 {
		fs.NAT = fs.Addrs[0]
	}
	if len(fs.Addrs) == 0 {
		return fs, fmt.Sprintf("no %v address on %s", f, u.Interface)
	}
	learned, defaultDev, configured := l.Gateway.Get(f), l.DefaultDev.Get(f), u.Gateway4
	if f == inet.IPv6 {
		configured = u.Gateway6
	}
	// A lease's routers count while its address is on the interface.
	var leased netip.Addr
	if hasLease && slices.Contains(fs.Addrs, lease.Address.Addr()) {
		for _, g := range lease.Gateways {
			if inet.Of(g) == f {
				leased = g
				break
			}
		}
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
	case leased.IsValid():
		client := lease.Client
		if client == "" {
			client = "DHCP"
		}
		fs.Gateway, how = leased, "gateway "+leased.String()+" from the "+client+" lease"
	case learned.IsValid():
		fs.Gateway, how = learned, "gateway "+learned.String()+" from the main table"
	case l.PointToPoint || defaultDev:
		fs.PointToPoint, how = true, "point-to-point link"
	default:
		return fs, fmt.Sprintf("no %v gateway known for %s (configure gateway, install wanpin's DHCP client hook, or let DHCP install a default route)", f, u.Interface)
	}
	fs.Up = true
	return fs, fmt.Sprintf("%v %s, %s", f, fs.Addrs[0], how)
}

// AssumeUp is the state `wanpin plan --all-up` pretends an uplink has:
// up, with its configured gateway or as a point-to-point link, and no
// address known. IPv6 is assumed up with a configured gateway6, or as a
// point-to-point link where IPv4 is one too (PPP); an uplink with only an
// IPv4 gateway configured learns its IPv6 router at run time, which a plan
// cannot guess.
func AssumeUp(u config.Uplink) UplinkState {
	var st UplinkState
	*st.Of(inet.IPv4) = FamilyState{Up: true, Gateway: u.Gateway4, PointToPoint: !u.Gateway4.IsValid()}
	if u.Gateway6.IsValid() || !u.Gateway4.IsValid() {
		*st.Of(inet.IPv6) = FamilyState{Up: true, Gateway: u.Gateway6, PointToPoint: !u.Gateway6.IsValid()}
	}
	return st
}
