package mptcp

// LimitsFor returns the limits n uplinks need, never below have.
//
// Subflows = n-1: the in-kernel path manager counts only the additional
// subflows, the first one (on the uplink routing chose) is free, and one
// more per other uplink's subflow endpoint is what makes every uplink
// carry traffic. AddAddrAccepted = n-1 as well: a peer that announces
// its other addresses (ADD_ADDR) gets one subflow to each from the
// router, on the same budget; 0 (the kernel's default) would ignore a
// multihomed server's announcements. Both are capped at 8, the most the
// kernel accepts.
//
// Only raised, never lowered: an admin who set higher limits for other
// MPTCP use on the box (fullmesh endpoints, a multihomed server) keeps
// them, and wanpin does not shrink a running connection's budget when an
// uplink goes away; a limit above what the endpoints use costs nothing.
func LimitsFor(n int, have Limits) Limits {
	want := uint32(0)
	if n > 1 {
		want = uint32(min(n-1, maxLimit))
	}
	return Limits{
		Subflows:        max(have.Subflows, want),
		AddAddrAccepted: max(have.AddAddrAccepted, want),
	}
}

// RaiseLimits sets the limits for n uplinks if they are higher than the
// kernel's, and reports whether it wrote.
func RaiseLimits(c *Client, n int) (Limits, bool, error) {
	have, err := c.Limits()
	if err != nil {
		return Limits{}, false, err
	}
	want := LimitsFor(n, have)
	if want == have {
		return have, false, nil
	}
	if err := c.SetLimits(want); err != nil {
		return have, false, err
	}
	return want, true, nil
}
