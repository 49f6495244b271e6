package mptcp

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Client talks to one network namespace's in-kernel path manager.
type Client struct {
	c      *genetlink.Conn
	family uint16
}

// Dial opens the path manager of the network namespace netnsFD refers to
// (0: the caller's own). The namespace is fixed at Dial: the netlink
// socket belongs to the namespace it was created in.
func Dial(netnsFD int) (*Client, error) {
	c, err := genetlink.Dial(&netlink.Config{NetNS: netnsFD, Strict: true})
	if err != nil {
		return nil, fmt.Errorf("opening generic netlink: %w", err)
	}
	f, err := c.GetFamily(familyName)
	if err != nil {
		c.Close()
		// ENOENT: a kernel built without CONFIG_MPTCP.
		return nil, fmt.Errorf("resolving generic netlink family %s: %w", familyName, err)
	}
	return &Client{c: c, family: f.ID}, nil
}

// Close closes the netlink socket.
func (c *Client) Close() error { return c.c.Close() }

func (c *Client) do(cmd uint8, flags netlink.HeaderFlags, data []byte) ([]genetlink.Message, error) {
	return c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: familyVersion},
		Data:   data,
	}, c.family, netlink.Request|flags)
}

// Endpoints lists the endpoints of every owner, ordered by ID as the
// kernel keeps them.
func (c *Client) Endpoints() ([]Endpoint, error) {
	msgs, err := c.do(cmdGetAddr, netlink.Dump, nil)
	if err != nil {
		return nil, fmt.Errorf("listing MPTCP endpoints: %w", err)
	}
	var out []Endpoint
	for _, m := range msgs {
		e, err := decodeEndpoint(m.Data)
		if err != nil {
			return nil, fmt.Errorf("listing MPTCP endpoints: %w", err)
		}
		out = append(out, e)
	}
	return out, nil
}

// Add adds an endpoint with its ID (not 0: the kernel would choose one).
// The kernel refuses an address it has already (EEXIST) and an ID in use
// (EBUSY).
func (c *Client) Add(e Endpoint) error {
	if e.ID == 0 {
		return fmt.Errorf("adding MPTCP endpoint %s: no ID", e)
	}
	b, err := encodeEndpoint(e, true)
	if err == nil {
		_, err = c.do(cmdAddAddr, netlink.Acknowledge, b)
	}
	if err != nil {
		return fmt.Errorf("adding MPTCP endpoint %s: %w", e, err)
	}
	return nil
}

// Delete deletes the endpoint with this ID; the kernel closes the
// subflows that use its address and tells the peers (REMOVE_ADDR).
func (c *Client) Delete(id uint8) error {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrAddr, func(nae *netlink.AttributeEncoder) error {
		nae.Uint8(addrAttrID, id)
		return nil
	})
	b, err := ae.Encode()
	if err == nil {
		_, err = c.do(cmdDelAddr, netlink.Acknowledge, b)
	}
	if err != nil {
		return fmt.Errorf("deleting MPTCP endpoint id %d: %w", id, err)
	}
	return nil
}

// SetFlags changes the Backup and Fullmesh flags of the endpoint with
// e's ID and address to e's; the kernel ignores the other bits. A Backup
// change is sent to the peers of the existing subflows (MP_PRIO), which
// stay open: this is why a tier change must not delete the endpoint.
func (c *Client) SetFlags(e Endpoint) error {
	b, err := encodeEndpoint(e, false)
	if err == nil {
		_, err = c.do(cmdSetFlags, netlink.Acknowledge, b)
	}
	if err != nil {
		return fmt.Errorf("setting MPTCP endpoint %s flags to %q: %w", e.Addr, e.Flags, err)
	}
	return nil
}

// Limits reads the namespace's limits.
func (c *Client) Limits() (Limits, error) {
	msgs, err := c.do(cmdGetLimits, 0, nil)
	if err != nil {
		return Limits{}, fmt.Errorf("reading MPTCP limits: %w", err)
	}
	if len(msgs) != 1 {
		return Limits{}, fmt.Errorf("reading MPTCP limits: %d answers", len(msgs))
	}
	ad, err := netlink.NewAttributeDecoder(msgs[0].Data)
	if err != nil {
		return Limits{}, fmt.Errorf("reading MPTCP limits: %w", err)
	}
	var l Limits
	for ad.Next() {
		switch ad.Type() {
		case attrRcvAddAddrs:
			l.AddAddrAccepted = ad.Uint32()
		case attrSubflows:
			l.Subflows = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return Limits{}, fmt.Errorf("reading MPTCP limits: %w", err)
	}
	return l, nil
}

// SetLimits sets both limits; the kernel refuses more than 8 (EINVAL).
func (c *Client) SetLimits(l Limits) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrRcvAddAddrs, l.AddAddrAccepted)
	ae.Uint32(attrSubflows, l.Subflows)
	b, err := ae.Encode()
	if err == nil {
		_, err = c.do(cmdSetLimits, netlink.Acknowledge, b)
	}
	if err != nil {
		return fmt.Errorf("setting MPTCP limits to %d subflows, %d add_addr_accepted: %w", l.Subflows, l.AddAddrAccepted, err)
	}
	return nil
}

// encodeEndpoint builds the nested address attribute; withIfindex is off
// for SET_FLAGS, whose lookup is by address and ID only.
func encodeEndpoint(e Endpoint, withIfindex bool) ([]byte, error) {
	if !e.Addr.IsValid() {
		return nil, errors.New("no address")
	}
	a := e.Addr.Unmap()
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrAddr, func(nae *netlink.AttributeEncoder) error {
		if a.Is4() {
			nae.Uint16(addrAttrFamily, unix.AF_INET)
			b := a.As4()
			nae.Bytes(addrAttrAddr4, b[:])
		} else {
			nae.Uint16(addrAttrFamily, unix.AF_INET6)
			b := a.As16()
			nae.Bytes(addrAttrAddr6, b[:])
		}
		nae.Uint8(addrAttrID, e.ID)
		nae.Uint32(addrAttrFlags, uint32(e.Flags))
		if withIfindex && e.Ifindex != 0 {
			nae.Int32(addrAttrIfIdx, int32(e.Ifindex))
		}
		return nil
	})
	return ae.Encode()
}

func decodeEndpoint(b []byte) (Endpoint, error) {
	var e Endpoint
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return e, err
	}
	for ad.Next() {
		if ad.Type() != attrAddr {
			continue
		}
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			for nad.Next() {
				switch nad.Type() {
				case addrAttrID:
					e.ID = nad.Uint8()
				case addrAttrAddr4, addrAttrAddr6:
					a, ok := netip.AddrFromSlice(nad.Bytes())
					if !ok {
						return fmt.Errorf("address of %d bytes", len(nad.Bytes()))
					}
					e.Addr = a
				case addrAttrFlags:
					e.Flags = Flags(nad.Uint32())
				case addrAttrIfIdx:
					e.Ifindex = int(int32(nad.Uint32()))
				}
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return e, err
	}
	if !e.Addr.IsValid() {
		return e, fmt.Errorf("endpoint id %d without an address", e.ID)
	}
	return e, nil
}
