// Package bus is wanpin's control interface on the D-Bus system bus: the
// daemon exports it (Serve), the CLI calls it (Client).
//
//	name      org.wanpin.Wanpin1
//	object    /org/wanpin/Wanpin1
//	interface org.wanpin.Wanpin1
//	  Status() -> (s json)                         anyone
//	  Reload() -> ()                               root
//	  Event(s kind, s iface, a{sv} args) -> ()     root; kind up|down, args local, peer
//	  SetService(s uplink, b in_service) -> ()     root; maintenance (wanpin up/down)
//	  Exec(s uplink, s cgroup) -> ()               root; wanpin exec --uplink
//
// The bus policy (dbus/org.wanpin.Wanpin1.conf) already restricts Reload
// and Event to root; the daemon checks the caller's uid again, so a
// loosened policy file does not open them up.
package bus

import (
	"encoding/json"
	"time"
)

// Names on the bus.
const (
	Name      = "org.wanpin.Wanpin1"
	Path      = "/org/wanpin/Wanpin1"
	Interface = "org.wanpin.Wanpin1"

	ErrPermissionDenied = Interface + ".Error.PermissionDenied"
	ErrInvalidArgs      = Interface + ".Error.InvalidArgs"
	ErrFailed           = Interface + ".Error.Failed"
)

// Status is what `wanpin status --json` prints.
type Status struct {
	Config  string   `json:"config"`
	Uplinks []Uplink `json:"uplinks"`
}

// Uplink is one uplink in a Status.
type Uplink struct {
	Name      string    `json:"name"`
	Interface string    `json:"interface"`
	State     string    `json:"state"` // "up" or "down"
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"`
	Address   string    `json:"address"`             // first address, "" if none
	Addresses []string  `json:"addresses,omitempty"` // all of them
	Gateway   string    `json:"gateway"`             // IPv4 gateway, "" if none or point-to-point
	Gateway6  string    `json:"gateway6,omitempty"`
	Weight    int       `json:"weight"`
	Tier      int       `json:"tier"`
	Mark      string    `json:"mark"`
	Pinned    int       `json:"pinned"` // conntrack entries pinned to it
	RTTms     float64   `json:"rtt_ms"` // latest health probe round trip; 0: not probed or no answer
	Loss      float64   `json:"loss"`   // health probe loss over the window, 0..1; -1: not probed
	// Each address family on its own: one can be down while the other
	// carries traffic.
	IPv4 Family `json:"ipv4"`
	IPv6 Family `json:"ipv6"`
}

// Family is one address family of an uplink.
type Family struct {
	State     string    `json:"state"` // "up" or "down"
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"`
	Addresses []string  `json:"addresses,omitempty"`
	Gateway   string    `json:"gateway,omitempty"`
	RTTms     float64   `json:"rtt_ms"`
	Loss      float64   `json:"loss"`
}

// Marshal encodes a Status for the wire.
func (s Status) Marshal() string {
	b, _ := json.Marshal(s)
	return string(b)
}
