package mptcp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// wanpin's ID block. The kernel's endpoints have no owner tag, so the ID
// is the only mark wanpin can put on its own: it owns FirstID..LastID
// and never touches an endpoint outside them.
//
// Why the top of the range, handed out from 255 down (measured on 6.18):
// an `ip mptcp endpoint add ADDR` without an id gets the first free ID at
// or above the highest ID given out so far, wrapping to 1 after 255. A
// block in the low IDs would be where such adds land after a flush; a
// block like 200..254 would not help either, since after wanpin's 200
// the next such add gets 201. With wanpin holding 255, the search wraps
// straight to the low IDs. The one gap left: a hole in the block (an
// uplink's endpoint deleted) above the kernel's cursor can still be taken
// by such an add; Compute then sees an endpoint with an ID in the block,
// and since IDs are all it has, treats it as wanpin's own. ComputeOwned
// (SyncOwned) closes it with the caller's record of what it added.
const (
	FirstID = 200
	LastID  = maxID
)

// Owned reports whether an endpoint ID is in wanpin's block.
func Owned(id uint8) bool { return id >= FirstID && id <= LastID }

// OpKind is what one step does to the kernel.
type OpKind int

const (
	OpDelete   OpKind = iota + 1 // delete Endpoint.ID
	OpAdd                        // add Endpoint
	OpSetFlags                   // set Endpoint.Flags on Endpoint.ID
)

func (k OpKind) String() string {
	switch k {
	case OpDelete:
		return "delete"
	case OpAdd:
		return "add"
	case OpSetFlags:
		return "set flags"
	}
	return fmt.Sprintf("op%d", int(k))
}

// Op is one netlink write.
type Op struct {
	Kind     OpKind
	Endpoint Endpoint
}

func (o Op) String() string { return o.Kind.String() + " " + o.Endpoint.String() }

// Plan is what Sync will do: the ordered writes, and the wanted addresses
// left alone because somebody else's endpoint has them.
type Plan struct {
	Ops     []Op
	Foreign []Endpoint // the others' endpoints holding a wanted address
}

// Compute returns the writes that turn current (the kernel's endpoints,
// everybody's) into want for wanpin's block. want's IDs are ignored: an
// address keeps the ID its endpoint has, a new one gets the highest free
// ID in the block. want must not repeat an address.
//
// Order: deletions first (they free the subflow slots of the limits and
// the IDs and addresses that the adds may reuse), then each replaced
// endpoint deleted and added again under its ID, then flag changes, then
// new endpoints from the highest ID down (so that 255 is taken first).
func Compute(current, want []Endpoint) (Plan, error) {
	return ComputeOwned(current, want, func(e Endpoint) bool { return Owned(e.ID) })
}

// ComputeOwned is Compute for a caller that knows better than the ID
// block which endpoints are its own: owned is asked about every endpoint
// in the block (one outside it is never wanpin's), so that an endpoint an
// id-less `ip mptcp endpoint add` put into a hole of the block is left
// alone as somebody else's.
func ComputeOwned(current, want []Endpoint, owned func(Endpoint) bool) (Plan, error) {
	mine := func(e Endpoint) bool { return Owned(e.ID) && owned(e) }
	var p Plan
	used := map[uint8]bool{}
	foreign := map[netip.Addr]Endpoint{}
	own := map[netip.Addr]Endpoint{}
	for _, e := range current {
		used[e.ID] = true
		if mine(e) {
			own[e.Addr.Unmap()] = e
		} else {
			foreign[e.Addr.Unmap()] = e
		}
	}
	seen := map[netip.Addr]bool{}
	var replace, setFlags, add []Op
	wanted := map[netip.Addr]bool{}
	for _, w := range want {
		if err := validate(w); err != nil {
			return Plan{}, err
		}
		a := w.Addr.Unmap()
		w.Addr = a
		if seen[a] {
			return Plan{}, fmt.Errorf("MPTCP endpoint %s wanted twice", a)
		}
		seen[a] = true
		if f, ok := foreign[a]; ok {
			p.Foreign = append(p.Foreign, f)
			continue
		}
		wanted[a] = true
		e, ok := own[a]
		if !ok {
			add = append(add, Op{OpAdd, w})
			continue
		}
		w.ID = e.ID
		switch {
		case e == w:
		case e.Ifindex == w.Ifindex && e.Flags&^changeable == w.Flags&^changeable && setFlagsCan(e, w):
			setFlags = append(setFlags, Op{OpSetFlags, w})
		default:
			replace = append(replace, Op{OpDelete, e}, Op{OpAdd, w})
		}
	}
	for _, e := range current {
		if mine(e) && !wanted[e.Addr.Unmap()] {
			p.Ops = append(p.Ops, Op{OpDelete, e})
			used[e.ID] = false
		}
	}
	// New endpoints in address order, so the same want gives the same IDs.
	slices.SortFunc(add, func(x, y Op) int { return x.Endpoint.Addr.Compare(y.Endpoint.Addr) })
	id := LastID
	for i := range add {
		for id >= FirstID && used[uint8(id)] {
			id--
		}
		if id < FirstID {
			return Plan{}, fmt.Errorf("adding MPTCP endpoint %s: no free ID left in %d..%d", add[i].Endpoint.Addr, FirstID, LastID)
		}
		add[i].Endpoint.ID = uint8(id)
		used[uint8(id)] = true
	}
	slices.SortFunc(add, func(x, y Op) int { return cmp.Compare(y.Endpoint.ID, x.Endpoint.ID) })
	p.Ops = append(p.Ops, replace...)
	p.Ops = append(p.Ops, setFlags...)
	p.Ops = append(p.Ops, add...)
	return p, nil
}

// setFlagsCan: the kernel refuses Fullmesh on a Signal endpoint (EINVAL,
// "invalid addr flags"), so such a change is left to delete and add,
// where the same refusal reports the bad want.
func setFlagsCan(from, to Endpoint) bool {
	return !(to.Flags&Fullmesh != 0 && from.Flags&Signal != 0)
}

func validate(w Endpoint) error {
	switch {
	case !w.Addr.IsValid():
		return fmt.Errorf("MPTCP endpoint without an address")
	case w.Flags&Fullmesh != 0 && w.Flags&Signal != 0:
		// The kernel refuses it (EINVAL): fullmesh is for subflows.
		return fmt.Errorf("MPTCP endpoint %s: fullmesh and signal together", w.Addr)
	case w.Flags&^(Signal|Subflow|Backup|Fullmesh) != 0:
		return fmt.Errorf("MPTCP endpoint %s: unknown flags %s", w.Addr, w.Flags)
	case w.Ifindex < 0:
		return fmt.Errorf("MPTCP endpoint %s: ifindex %d", w.Addr, w.Ifindex)
	}
	return nil
}
