// Package flush deletes the stale conntrack entries of one uplink, and
// only those: the entries pinned to it (by its mark) when it goes down,
// and the entries NATed to an address it lost. It also counts the entries
// pinned to each uplink, for status and metrics.
//
// Why it is needed: the kernel purges masquerade entries when an
// interface goes administratively down or loses its address, but not on
// carrier loss or a failed health check. A UDP flow (VoIP, WireGuard)
// with a fixed 5-tuple would keep its dead NAT mapping forever.
package flush

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/inet"
)

// Flusher talks to conntrack in one network namespace.
type Flusher struct {
	c *conntrack.Conn
}

// New connects to conntrack in the namespace whose fd is nsFd, or in the
// current one when nsFd < 0.
func New(nsFd int) (*Flusher, error) {
	cfg := &netlink.Config{}
	if nsFd >= 0 {
		cfg.NetNS = nsFd
	}
	c, err := conntrack.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to conntrack: %w", err)
	}
	return &Flusher{c: c}, nil
}

// Close releases the connection.
func (f *Flusher) Close() error { return f.c.Close() }

// FlushMark deletes every entry of one family whose ct mark & mask ==
// mark (an uplink whose IPv6 failed keeps its IPv4 connections), filtered
// in the kernel. It returns how many there were just before (the kernel's
// filtered flush does not count).
func (f *Flusher) FlushMark(mark, mask uint32, fam inet.Family) (int, error) {
	proto := netfilter.ProtoIPv4
	if fam == inet.IPv6 {
		proto = netfilter.ProtoIPv6
	}
	return f.flushMark(conntrack.NewFilter().Family(proto).Mark(mark).MarkMask(mask), mark, mask)
}

func (f *Flusher) flushMark(filter conntrack.Filter, mark, mask uint32) (int, error) {
	flows, err := f.c.DumpFilter(filter, nil)
	if err != nil {
		return 0, fmt.Errorf("listing entries with mark %#x/%#x: %w", mark, mask, err)
	}
	if len(flows) == 0 {
		return 0, nil
	}
	if err := f.c.FlushFilter(filter); err != nil {
		return 0, fmt.Errorf("flushing entries with mark %#x/%#x: %w", mark, mask, err)
	}
	return len(flows), nil
}

// Evict moves one family's connections off an uplink for failback: of
// the entries whose ct mark & mask == mark, TCP ones get the mark evict
// in place of mark (the other bits kept), which wanpin's table turns
// into a reset on their next packet, and the others are deleted, so
// their next packet is balanced afresh. An entry already gone is not an
// error.
func (f *Flusher) Evict(mark, mask, evict uint32, fam inet.Family) (reset, deleted int, err error) {
	proto := netfilter.ProtoIPv4
	if fam == inet.IPv6 {
		proto = netfilter.ProtoIPv6
	}
	flows, err := f.c.DumpFilter(conntrack.NewFilter().Family(proto).Mark(mark).MarkMask(mask), nil)
	if err != nil {
		return 0, 0, fmt.Errorf("listing entries with mark %#x/%#x: %w", mark, mask, err)
	}
	for _, fl := range flows {
		if fl.TupleOrig.Proto.Protocol == unix.IPPROTO_TCP {
			// Only the tuples, the zone and the mark: an update with the
			// status or the TCP state the dump reported could be refused.
			// Both tuples: the library sends an update as IPv6 only when
			// both are, and the kernel refuses an IPv6 tuple sent as IPv4
			// (EINVAL; TestEvictIPv6).
			upd := conntrack.Flow{TupleOrig: fl.TupleOrig, TupleReply: fl.TupleReply, Zone: fl.Zone, Mark: fl.Mark&^mask | evict}
			if err := f.c.Update(upd); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return reset, deleted, fmt.Errorf("marking a TCP entry for its reset: %w", err)
			}
			reset++
			continue
		}
		if err := f.c.Delete(fl); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return reset, deleted, fmt.Errorf("deleting an entry: %w", err)
		}
		deleted++
	}
	return reset, deleted, nil
}

// FlushNATAddr deletes the entries source-NATed to addr: what a PPP
// re-dial or a new DHCP lease leaves behind. The kernel cannot filter on
// NAT addresses, so the table is dumped and matching entries deleted one
// by one; an entry already gone is not an error.
func (f *Flusher) FlushNATAddr(addr netip.Addr) (int, error) {
	flows, err := f.c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("listing conntrack entries: %w", err)
	}
	n := 0
	for _, fl := range flows {
		if !fl.Status.SrcNAT() || fl.TupleReply.IP.DestinationAddress != addr {
			continue
		}
		if err := f.c.Delete(fl); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return n, fmt.Errorf("deleting an entry NATed to %s: %w", addr, err)
		}
		n++
	}
	return n, nil
}

// CountByMark counts entries per (ct mark & mask).
func (f *Flusher) CountByMark(mask uint32) (map[uint32]int, error) {
	flows, err := f.c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("listing conntrack entries: %w", err)
	}
	out := map[uint32]int{}
	for _, fl := range flows {
		if m := fl.Mark & mask; m != 0 {
			out[m]++
		}
	}
	return out, nil
}

// Move is what a reload does to the entries of one uplink pinned by the
// old configuration (ct mark & the old mask == Old): New replaces
// wanpin's bits (the uplink's mark changed), or with Delete they go (the
// uplink was removed).
type Move struct {
	Old, New uint32
	Delete   bool
}

// Repin carries the pinned connections over a reload that changed the
// marks: for each move, the entries whose ct mark & oldMask == Old get
// ct mark &^ (oldMask | newMask) | New (other programs' bits outside
// both masks kept; bits of the old mask outside the new one are
// wanpin's old bits, and bits of the new mask that were outside the old
// one are not wanpin's mark, so both are cleared), or are deleted. It
// returns how many entries each move changed, in order; an entry already
// gone is not an error.
//
// Every move's entries are dumped before any is changed: when uplinks
// swap marks, one uplink's new mark is another's old one, and a dump
// after the first update would find the entries just moved and move them
// again.
func (f *Flusher) Repin(oldMask, newMask uint32, moves []Move) ([]int, error) {
	dumps := make([][]conntrack.Flow, len(moves))
	for i, m := range moves {
		// Filtered in the kernel, both families: a reload changes an
		// uplink's mark for IPv4 and IPv6 alike.
		flows, err := f.c.DumpFilter(conntrack.NewFilter().Mark(m.Old).MarkMask(oldMask), nil)
		if err != nil {
			return make([]int, len(moves)), fmt.Errorf("listing entries with mark %#x/%#x: %w", m.Old, oldMask, err)
		}
		dumps[i] = flows
	}
	counts := make([]int, len(moves))
	for i, m := range moves {
		for _, fl := range dumps[i] {
			if m.Delete {
				if err := f.c.Delete(fl); err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue
					}
					return counts, fmt.Errorf("deleting an entry with mark %#x: %w", fl.Mark, err)
				}
				counts[i]++
				continue
			}
			// Only the tuples, the zone (the tuple is looked up in it) and
			// the mark, as in Evict: an update with the status or the TCP
			// state the dump reported could be refused. The reply tuple
			// too: the library sends an update as IPv6 only when both
			// tuples are, and the kernel refuses an IPv6 tuple sent as
			// IPv4 (EINVAL). m.New is never 0, which the library would
			// leave out of the message.
			upd := conntrack.Flow{TupleOrig: fl.TupleOrig, TupleReply: fl.TupleReply, Zone: fl.Zone,
				Mark: fl.Mark&^(oldMask|newMask) | m.New}
			if err := f.c.Update(upd); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return counts, fmt.Errorf("re-marking an entry from %#x to %#x: %w", fl.Mark, upd.Mark, err)
			}
			counts[i]++
		}
	}
	return counts, nil
}
