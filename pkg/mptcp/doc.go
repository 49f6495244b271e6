// Package mptcp manages the in-kernel MPTCP path manager of a network
// namespace over generic netlink ("mptcp_pm"): its endpoints and limits,
// and counts the subflows in use, so that the router's own MPTCP
// connections use every working uplink at once.
//
// It serves only sockets opened as MPTCP on the router itself (Go's
// SetMultipathTCP, mptcpize, a proxy): forwarded LAN traffic is not
// touched. net.mptcp.enabled must be 1 (the default).
//
// The kernel facts the design rests on (measured on 6.18 by the tests
// here, in namespaces):
//
//   - One Subflow endpoint per uplink address. The path manager opens,
//     on each connection, one subflow from every subflow endpoint's
//     address to the peer, skipping an address a subflow already uses
//     (the first subflow's): the endpoint is the unit of "use this
//     uplink", and an address can be an endpoint once (EEXIST).
//   - The kernel opens subflows only when a connection is established,
//     when an endpoint is added (on every existing connection too: the
//     uplink that comes back gets a new subflow on a long download) and
//     when the peer announces an address. Deleting an endpoint closes
//     the subflows from its address, the first subflow included, and the
//     connection carries on over the others without an error. A subflow
//     that dies while its endpoint stays is never opened again (measured
//     by killing it, as a middlebox's reset would; a long outage that
//     times it out should end the same way, not measured): Refresh
//     (delete and add) is the remedy, Orphaned the hint.
//   - Subflows route by source address: the subflow from an uplink's
//     address leaves by that uplink only through the per-uplink
//     `ip rule from ADDR lookup TABLE`; without it, it leaves by the main
//     table's uplink and the ISP drops it. So subflows must not be
//     re-marked by the balancer: a mark that picks another uplink's
//     table sends them out the wrong way (no dev), or, when that table
//     ends in `unreachable default` as wanpin's do, stops them even with
//     dev.
//   - dev (Ifindex): the subflow socket is bound to the uplink's device,
//     so no route through another device can carry it (a stray mark's
//     table without an unreachable route is skipped, and the lookup goes
//     on to the source rule). A new ifindex (pppN each session) needs the
//     endpoint replaced: SET_FLAGS changes flags only.
//   - Backup for worse tiers: a backup subflow is established but gets
//     no data while a non-backup one works (90 bytes of 50 MB measured),
//     so failing over to it needs no handshake. SET_FLAGS changes Backup
//     (and Fullmesh) in place, keeping the subflow and telling the peer
//     (MP_PRIO); it silently ignores Subflow and Signal, which need the
//     endpoint deleted and added, and refuses Fullmesh with Signal.
//   - Limits: a new namespace has subflows 2, add_addr_accepted 0; the
//     kernel refuses more than 8. Subflows counts the additional subflows
//     of a connection, not the first (see LimitsFor).
//   - Endpoints carry no owner: wanpin owns the IDs FirstID..LastID (see
//     there for the kernel's ID allocation that chose them).
package mptcp
