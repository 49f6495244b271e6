// Package watch observes the network interfaces that carry wanpin's
// uplinks: a snapshot of their state read from the kernel, and a stream of
// "something changed" signals from netlink subscriptions. It never changes
// anything; the daemon turns what it reports into uplink states.
package watch

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/internal/rtnl"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
)

// Observer reads interface state from one network namespace.
type Observer struct {
	h *netlink.Handle
}

// NewObserver opens rtnetlink in ns (netns.None() for the current one).
func NewObserver(ns netns.NsHandle) (*Observer, error) {
	h, err := rtnl.Open(ns)
	if err != nil {
		return nil, err
	}
	return &Observer{h: h}, nil
}

// Close releases the socket.
func (o *Observer) Close() { o.h.Close() }

// Snapshot reads the named interfaces. An interface that does not exist
// is reported with Exists false, not as an error: a PPP link that is not
// dialled is a normal state.
func (o *Observer) Snapshot(names []string) (map[string]core.Link, error) {
	out := make(map[string]core.Link, len(names))
	byIndex := map[int]string{}
	for _, n := range names {
		l := core.Link{Name: n}
		nl, err := o.h.LinkByName(n)
		if err != nil {
			if _, ok := err.(netlink.LinkNotFoundError); ok {
				out[n] = l
				continue
			}
			return nil, fmt.Errorf("reading interface %s: %w", n, err)
		}
		a := nl.Attrs()
		l.Exists = true
		l.Index = a.Index
		l.AdminUp = a.RawFlags&unix.IFF_UP != 0
		l.Carrier = a.RawFlags&unix.IFF_LOWER_UP != 0
		l.PointToPoint = a.RawFlags&unix.IFF_POINTOPOINT != 0
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			addrs, err := o.h.AddrList(nl, fam)
			if err != nil {
				return nil, fmt.Errorf("reading addresses of %s: %w", n, err)
			}
			for _, ad := range addrs {
				ip, ok := netip.AddrFromSlice(ad.IP)
				if !ok {
					continue
				}
				ip = ip.Unmap()
				// Link-local and tentative addresses cannot carry
				// traffic to the internet.
				if ip.IsLinkLocalUnicast() || ad.Flags&unix.IFA_F_TENTATIVE != 0 || ad.Flags&unix.IFA_F_DADFAILED != 0 {
					continue
				}
				ones, _ := ad.Mask.Size()
				// Secondary (an IPv4 alias) and temporary (IPv6 privacy)
				// addresses, and deprecated ones, are not what wanpin
				// translates the uplink's traffic to.
				x := core.Addr{Prefix: netip.PrefixFrom(ip, ones),
					Secondary:  ad.Flags&unix.IFA_F_SECONDARY != 0,
					Deprecated: ad.Flags&unix.IFA_F_DEPRECATED != 0}
				if ad.Peer != nil {
					if p, ok := netip.AddrFromSlice(ad.Peer.IP); ok && p.Unmap() != ip {
						x.Peer = p.Unmap()
					}
				}
				l.Addrs = append(l.Addrs, x)
			}
		}
		sort.Slice(l.Addrs, func(i, j int) bool { return l.Addrs[i].Prefix.Addr().Less(l.Addrs[j].Prefix.Addr()) })
		out[n] = l
		byIndex[a.Index] = n
	}
	if err := o.mainDefaults(out, byIndex); err != nil {
		return nil, err
	}
	return out, nil
}

// mainDefaults finds the main table's default routes through the watched
// interfaces: that is where a DHCP client or RA puts the ISP's gateway.
func (o *Observer) mainDefaults(out map[string]core.Link, byIndex map[int]string) error {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		routes, err := o.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("reading the main table: %w", err)
		}
		best := map[string]int{}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if r.Type != unix.RTN_UNICAST {
				continue
			}
			hops := []struct {
				idx int
				gw  []byte
			}{{r.LinkIndex, r.Gw}}
			for _, nh := range r.MultiPath {
				hops = append(hops, struct {
					idx int
					gw  []byte
				}{nh.LinkIndex, nh.Gw})
			}
			for _, hop := range hops {
				name, ok := byIndex[hop.idx]
				if !ok {
					continue
				}
				// Lowest metric wins, as it would in the kernel.
				if m, seen := best[name]; seen && m <= r.Priority {
					continue
				}
				best[name] = r.Priority
				l := out[name]
				gw, _ := netip.AddrFromSlice(hop.gw)
				gw = gw.Unmap()
				f := inet.FromAF(fam)
				*l.Gateway.Of(f), *l.DefaultDev.Of(f) = gw, !gw.IsValid()
				out[name] = l
			}
		}
	}
	return nil
}
