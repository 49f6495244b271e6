package mptcp

import (
	"errors"
	"fmt"
)

// Kernel is the part of Client that Sync uses.
type Kernel interface {
	Endpoints() ([]Endpoint, error)
	Add(Endpoint) error
	Delete(id uint8) error
	SetFlags(Endpoint) error
}

var _ Kernel = (*Client)(nil)

// Changes is what a Sync did.
type Changes struct {
	Applied []Op       // the writes made, in order
	Foreign []Endpoint // others' endpoints that hold a wanted address, left alone
}

// Sync makes wanpin's endpoints (IDs FirstID..LastID) match want and
// leaves every other endpoint alone. It reads the kernel first, so a
// second Sync with the same want writes nothing. On an error it stops and
// returns the writes made so far.
func Sync(k Kernel, want []Endpoint) (Changes, error) {
	return SyncOwned(k, want, func(e Endpoint) bool { return Owned(e.ID) })
}

// SyncOwned is Sync with ComputeOwned's owned: only the endpoints of the
// block that owned accepts are wanpin's.
func SyncOwned(k Kernel, want []Endpoint, owned func(Endpoint) bool) (Changes, error) {
	cur, err := k.Endpoints()
	if err != nil {
		return Changes{}, fmt.Errorf("syncing MPTCP endpoints: %w", err)
	}
	p, err := ComputeOwned(cur, want, owned)
	if err != nil {
		return Changes{}, fmt.Errorf("syncing MPTCP endpoints: %w", err)
	}
	ch := Changes{Foreign: p.Foreign}
	for _, op := range p.Ops {
		switch op.Kind {
		case OpDelete:
			err = k.Delete(op.Endpoint.ID)
		case OpAdd:
			err = k.Add(op.Endpoint)
		case OpSetFlags:
			err = k.SetFlags(op.Endpoint)
			if err != nil {
				// A kernel that cannot make this change in place (before
				// 5.18 there was no SET_FLAGS, before 6.0 no fullmesh
				// change): the endpoint is replaced, and its subflows
				// closed and opened again.
				var applied []Op
				applied, err = replace(k, op.Endpoint, err)
				ch.Applied = append(ch.Applied, applied...)
				if err != nil {
					return ch, fmt.Errorf("syncing MPTCP endpoints: %w", err)
				}
				continue
			}
		}
		if err != nil {
			return ch, fmt.Errorf("syncing MPTCP endpoints: %w", err)
		}
		ch.Applied = append(ch.Applied, op)
	}
	return ch, nil
}

func replace(k Kernel, e Endpoint, setErr error) ([]Op, error) {
	if err := k.Delete(e.ID); err != nil {
		return nil, errors.Join(setErr, err)
	}
	// The old flags are not known here: the deletion is reported by ID
	// and address.
	applied := []Op{{OpDelete, Endpoint{ID: e.ID, Addr: e.Addr}}}
	if err := k.Add(e); err != nil {
		return applied, errors.Join(setErr, err)
	}
	return append(applied, Op{OpAdd, e}), nil
}
