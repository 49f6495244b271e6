package mptcp

import "fmt"

// Refresh deletes wanpin's endpoint e and adds it again, the one way to
// make the in-kernel path manager open a subflow from e's address again
// on connections that lost it. The kernel opens subflows only when a
// connection is established, when an endpoint is added, and when the
// peer announces an address: a subflow that died while its endpoint
// stayed (reset by a middlebox, timed out in a long outage, killed) is
// never re-created by itself. The price: the deletion also closes the
// healthy subflows from e's address on other connections, which the add
// then opens again.
func Refresh(k Kernel, e Endpoint) error {
	if !Owned(e.ID) {
		return fmt.Errorf("refreshing MPTCP endpoint %s: not wanpin's", e)
	}
	if err := k.Delete(e.ID); err != nil {
		return fmt.Errorf("refreshing MPTCP endpoint %s: %w", e.Addr, err)
	}
	if err := k.Add(e); err != nil {
		return fmt.Errorf("refreshing MPTCP endpoint %s: %w", e.Addr, err)
	}
	return nil
}

// Orphaned returns wanpin's subflow endpoints from which no subflow is
// established although MPTCP connections exist: the candidates for
// Refresh once their uplink is known to work. It is a hint, not proof (a
// connection may have a peer that refuses more subflows, or be one the
// router accepted, which subflow endpoints do not serve), so the caller
// should refresh an endpoint once per uplink recovery, not in a loop.
//
// Only endpoints of a family that some subflow uses count: a subflow
// never crosses families, so on a dual-stack router whose MPTCP
// connections are all IPv4 the IPv6 endpoints have no subflow by nature,
// and refreshing them (once a minute, each logged) would fix nothing.
// The price: a connection that lost every subflow of its family is not
// seen, but such a connection has nothing left to carry its data anyway.
func Orphaned(endpoints []Endpoint, n Counts) []Endpoint {
	if n.Connections == 0 {
		return nil
	}
	used := map[bool]bool{} // by Is4
	for a, c := range n.Subflows {
		if c > 0 {
			used[a.Unmap().Is4()] = true
		}
	}
	var out []Endpoint
	for _, e := range endpoints {
		a := e.Addr.Unmap()
		if Owned(e.ID) && e.Flags&Subflow != 0 && used[a.Is4()] && n.Subflows[a] == 0 {
			out = append(out, e)
		}
	}
	return out
}
