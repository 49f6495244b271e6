package policy

import (
	"bytes"
	"encoding/binary"
	"net/netip"

	"github.com/wanpin/wanpin/pkg/inet"
)

// Flow is the first packet of a new connection, as far as a policy can
// see it: what `wanpin explain` is asked about.
type Flow struct {
	Src   netip.Addr `json:"src,omitzero"`
	Dst   netip.Addr `json:"dst"`
	Proto uint8      `json:"proto"`           // 6 tcp, 17 udp
	SPort uint16     `json:"sport,omitempty"` // 0 unknown
	DPort uint16     `json:"dport,omitempty"` // 0 unknown
	// Local: the router's own traffic, from a socket of UID and GID in
	// the cgroup whose ancestors' ids are Cgroups (index = level, 0 the
	// root; empty: unknown). Forwarded traffic came in on InIface.
	Local   bool     `json:"local,omitempty"`
	UID     uint32   `json:"uid,omitempty"`
	GID     uint32   `json:"gid,omitempty"`
	Cgroups []uint64 `json:"cgroups,omitempty"`
	InIface string   `json:"iif,omitempty"`
	// Mark is the packet's fwmark when the socket set one (SO_MARK).
	Mark uint32 `json:"mark,omitempty"`
	// Learned tells whether the kernel's learned set (Set.Learned) of
	// that name holds key now (nil: none holds anything).
	Learned func(set string, key []byte) bool `json:"-"`
}

// Family is the flow's address family: its destination's, else its
// source's.
func (f Flow) Family() inet.Family {
	if fam := inet.Of(f.Dst); fam != 0 {
		return fam
	}
	return inet.Of(f.Src)
}

// load fetches what l loads from the flow's first packet, as the kernel
// would: header bytes from a synthetic packet, metadata from the flow.
// ok is false where the kernel's expression breaks (no socket for skuid
// on a forwarded packet, a cgroup level deeper than the socket's).
func (f Flow) load(l Load) (key []byte, ok bool) {
	switch l.Kind {
	case LoadMeta:
		switch l.Meta {
		case MetaIIFName:
			if f.Local {
				return IfnameKey(""), true // output: no input interface
			}
			return IfnameKey(f.InIface), true
		case MetaSKUID:
			return Native32(f.UID), f.Local
		case MetaSKGID:
			return Native32(f.GID), f.Local
		case MetaL4Proto:
			return []byte{f.Proto}, true
		}
	case LoadPayload:
		var h []byte
		switch l.Base {
		case BaseNetwork:
			h = f.networkHeader()
		case BaseTransport:
			h = f.transportHeader()
		}
		if int(l.Offset+l.Len) > len(h) {
			return nil, false
		}
		return h[l.Offset : l.Offset+l.Len], true
	case LoadCgroup:
		if !f.Local || int(l.Level) >= len(f.Cgroups) {
			return nil, false
		}
		return Native64(f.Cgroups[l.Level]), true
	}
	return nil, false
}

// networkHeader is the flow's IPv4 or IPv6 header, with the fields a
// policy may look at filled in.
func (f Flow) networkHeader() []byte {
	if f.Family() == inet.IPv6 {
		h := make([]byte, 40)
		h[0] = 6 << 4
		h[6] = f.Proto
		src, dst := f.Src.As16(), f.Dst.As16()
		copy(h[8:24], src[:])
		copy(h[24:40], dst[:])
		return h
	}
	h := make([]byte, 20)
	h[0] = 4<<4 | 5
	h[9] = f.Proto
	if f.Src.IsValid() {
		src := f.Src.Unmap().As4()
		copy(h[12:16], src[:])
	}
	if f.Dst.IsValid() {
		dst := f.Dst.Unmap().As4()
		copy(h[16:20], dst[:])
	}
	return h
}

// transportHeader is the first bytes of a TCP or UDP header: the ports.
func (f Flow) transportHeader() []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:2], f.SPort)
	binary.BigEndian.PutUint16(h[2:4], f.DPort)
	return h
}

// Matches reports whether the condition holds for the flow.
func (c Cond) Matches(f Flow) bool {
	if c.NFProto != 0 && f.Family() != c.NFProto {
		return false
	}
	if c.L4Proto != 0 && f.Proto != c.L4Proto {
		return false
	}
	key, ok := f.load(c.Load)
	if !ok {
		return false
	}
	if c.Set != nil && c.Set.Learned {
		return f.Learned != nil && f.Learned(c.Set.Name, key)
	}
	if c.Set != nil {
		return c.Set.Contains(key)
	}
	if c.Last != nil {
		return bytes.Compare(key, c.Eq) >= 0 && bytes.Compare(key, c.Last) <= 0
	}
	if c.Mask != nil {
		masked := make([]byte, len(key))
		for i := range key {
			if i < len(c.Mask) {
				masked[i] = key[i] & c.Mask[i]
			}
		}
		key = masked
	}
	return bytes.Equal(key, c.Eq)
}

// Matches reports whether every condition holds.
func (r Rule) Matches(f Flow) bool {
	for _, c := range r.Conds {
		if !c.Matches(f) {
			return false
		}
	}
	return true
}

// Matches reports whether one of the policy's rules for the flow's hook
// (output for the router's own traffic, prerouting for forwarded) holds.
func (c Compiled) Matches(f Flow) bool {
	rules := c.Forward
	if f.Local {
		rules = c.Local
	}
	for _, r := range rules {
		if r.Matches(f) {
			return true
		}
	}
	return false
}
