// Package bus is wanpin's control interface on the D-Bus system bus: the
// daemon exports it (Serve), the CLI calls it (Client).
//
//	name      org.wanpin.Wanpin1
//	object    /org/wanpin/Wanpin1
//	interface org.wanpin.Wanpin1
//	  Status() -> (s json)                         anyone
//	  Explain(s flow json) -> (s json)             anyone; 10 a second per user but root (limit.go)
//	  Reload() -> ()                               root
//	  Event(s kind, s iface, a{sv} args) -> ()     root; kind up|down (PPP: args local, peer, dns)
//	                                               or lease|lease-lost (DHCP: arg family)
//	  SetService(s uplink, b in_service) -> ()     root; maintenance (wanpin up/down)
//	  ResetQuota(s uplink) -> ()                   root; the quota's count from zero (wanpin quota reset)
//	  SetQuota(s uplink, t bytes) -> ()            root; the quota until the next reload, restart or period (wanpin quota set)
//	  Exec(s uplink) -> (s cgroup)                 root; wanpin exec --uplink: the caller moved into a fresh cgroup, pinned
//
// The bus policy (dbus/org.wanpin.Wanpin1.conf) already restricts
// every method but Status and Explain to root; the daemon checks the caller's uid again, so a
// loosened policy file does not open them up.
package bus

// Names on the bus.
const (
	Name      = "org.wanpin.Wanpin1"
	Path      = "/org/wanpin/Wanpin1"
	Interface = "org.wanpin.Wanpin1"

	ErrPermissionDenied = Interface + ".Error.PermissionDenied"
	ErrInvalidArgs      = Interface + ".Error.InvalidArgs"
	ErrFailed           = Interface + ".Error.Failed"
)
