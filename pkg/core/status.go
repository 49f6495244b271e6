package core

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/neighbours"
)

// Status is the daemon's state as `wanpin status`, the D-Bus Status call
// and the metrics endpoint show it: one struct for all three. Report
// fills what the machine knows; the executor adds what only the kernel
// and the probes know (pinned connections, traffic, round trips).
type Status struct {
	Config      string         `json:"config"`
	Uplinks     []UplinkReport `json:"uplinks"`
	Applies     uint64         `json:"applies"`
	ApplyErrors uint64         `json:"apply_errors"`
	// PinnedAge is how old the pinned-connection counts are (they are
	// counted off the control loop, at a bounded rate).
	PinnedAge Seconds `json:"pinned_age_s"`
	// Conflicts: other programs' rules that clash with wanpin's marks or
	// rule block, as the last check found them.
	Conflicts []neighbours.Finding `json:"conflicts,omitempty"`
	// RouteConflicts: routes wanpin wants in its tables that another
	// program's routes hold the place of (left to them).
	RouteConflicts []RouteConflictReport `json:"route_conflicts,omitempty"`
	// Sticky: sources the sticky balancers remember (the most recent
	// first, at most a hundred), of StickyTotal in all.
	Sticky      []StickyReport `json:"sticky,omitempty"`
	StickyTotal int            `json:"sticky_total,omitempty"`
	// Domains: the DNS learner of the domain policies (nil: no policy
	// has domains).
	Domains *DomainsReport `json:"domains,omitempty"`
	// MPTCPConnections: the router's MPTCP connections (with mptcp on).
	MPTCPConnections int `json:"mptcp_connections,omitempty"`
}

// MPTCPReport is an uplink's share of MPTCP (with mptcp on).
type MPTCPReport struct {
	Endpoints int  `json:"endpoints"` // the kernel path manager's endpoints of its addresses
	Subflows  int  `json:"subflows"`  // established subflows from them
	Backup    bool `json:"backup,omitempty"`
}

// DomainsReport is the DNS learner's counts since it started.
type DomainsReport struct {
	Learning       bool   `json:"learning"` // holding answers and learning from them; false: they pass unlearned
	Held           uint64 `json:"held"`     // UDP answers held
	Reinjected     uint64 `json:"reinjected"`
	ReinjectErrors uint64 `json:"reinject_errors"` // held answers lost
	ParseErrors    uint64 `json:"parse_errors"`
	Overruns       uint64 `json:"overruns"`   // NFLOG queue overflows: held answers lost
	Added          uint64 `json:"added"`      // addresses added to the policies' sets (or refreshed)
	AddErrors      uint64 `json:"add_errors"` // addresses the kernel refused (a full set)
}

// StickyReport is one source a sticky balancer remembers.
type StickyReport struct {
	Policy      string     `json:"policy,omitempty"` // "": the default balancing
	Source      netip.Addr `json:"source"`
	Destination netip.Addr `json:"destination,omitzero"` // sticky_by "source+destination"
	Uplink      string     `json:"uplink"`
	Left        Seconds    `json:"left_s"`
}

// UplinkReport is one uplink in a Status.
type UplinkReport struct {
	Name      string       `json:"name"`
	Interface string       `json:"interface"`
	State     string       `json:"state"` // "up" or "down": up while some family carries new connections
	Reason    string       `json:"reason"`
	Since     time.Time    `json:"since"`
	Address   string       `json:"address"`             // first address, "" if none
	Addresses []netip.Addr `json:"addresses,omitempty"` // all of them
	Gateway   string       `json:"gateway"`             // IPv4 gateway, "" if none or point-to-point
	Gateway6  string       `json:"gateway6,omitempty"`
	Weight    int          `json:"weight"` // in force: with weight_auto, the adaptive one
	// WeightAuto (weight = "auto"): the weight follows what the uplink
	// delivers; Bandwidth is the configured bit/s (0: none), Capacity the
	// estimate (bit/s, 0: not known yet), Rate what it carried in the
	// last window (bit/s, the busier direction) and Evidence what that
	// window said.
	WeightAuto bool         `json:"weight_auto,omitempty"`
	Bandwidth  uint64       `json:"bandwidth_bps,omitempty"`
	Capacity   float64      `json:"capacity_bps,omitempty"`
	Rate       float64      `json:"rate_bps,omitempty"`
	Evidence   string       `json:"capacity_evidence,omitempty"`
	Tier       int          `json:"tier"`
	Mark       Mark         `json:"mark"`
	Pinned     int          `json:"pinned"` // conntrack entries pinned to it
	MPTCP      *MPTCPReport `json:"mptcp,omitempty"`
	// Sticky: sources a sticky balancer remembers for it.
	Sticky int `json:"sticky,omitempty"`
	// The uplink's own probe figures: its IPv4 probes', else its IPv6 ones'.
	RTTms       float64 `json:"rtt_ms"` // 0: not probed or no answer
	Loss        float64 `json:"loss"`   // 0..1; -1: not probed
	Transitions uint64  `json:"transitions"`
	Flushed     uint64  `json:"conntrack_flushed"`
	// FailbackMoved: connections moved off it by failback = "move".
	FailbackMoved uint64  `json:"failback_moved"`
	Traffic       Traffic `json:"traffic"`
	// Quota: its data quota, when it has one.
	Quota *QuotaReport `json:"quota,omitempty"`
	// Each address family on its own: one can be down while the other
	// carries traffic.
	IPv4 FamilyReport `json:"ipv4"`
	IPv6 FamilyReport `json:"ipv6"`
}

// Family returns one family's report.
func (u *UplinkReport) Family(f inet.Family) *FamilyReport {
	if f == inet.IPv6 {
		return &u.IPv6
	}
	return &u.IPv4
}

// FamilyReport is one address family of an uplink.
type FamilyReport struct {
	State     string       `json:"state"` // "up" or "down"
	Reason    string       `json:"reason"`
	Since     time.Time    `json:"since"`
	Addresses []netip.Addr `json:"addresses,omitempty"`
	Gateway   string       `json:"gateway,omitempty"`
	DNS       []netip.Addr `json:"dns,omitempty"` // the uplink's resolvers: the router's queries to them leave here
	RTTms     float64      `json:"rtt_ms"`        // 0: not probed or no answer
	Loss      float64      `json:"loss"`          // 0..1; -1: not probed
}

// Traffic is what went through an uplink's interface since the daemon
// started, from the interface's own counters (link-layer headers
// included), kept across the interface's re-creation.
type Traffic struct {
	InBytes    uint64 `json:"in_bytes"`
	InPackets  uint64 `json:"in_packets"`
	OutBytes   uint64 `json:"out_bytes"`
	OutPackets uint64 `json:"out_packets"`
}

// Add sums two counts.
func (t Traffic) Add(o Traffic) Traffic {
	return Traffic{t.InBytes + o.InBytes, t.InPackets + o.InPackets, t.OutBytes + o.OutBytes, t.OutPackets + o.OutPackets}
}

// Mark is an fwmark; it marshals as hex ("0x10000").
type Mark uint32

func (m Mark) MarshalText() ([]byte, error) { return fmt.Appendf(nil, "%#x", uint32(m)), nil }

func (m *Mark) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 0, 32)
	*m = Mark(v)
	return err
}

func (m Mark) String() string { return fmt.Sprintf("%#x", uint32(m)) }

// Seconds is a duration that marshals as seconds.
type Seconds float64

// Report is the state's part of the status, uplinks in file order.
func (s State) Report() Status {
	st := Status{Config: s.Config.Path, Conflicts: s.Conflicts, RouteConflicts: s.routeConflictReports()}
	weighted := WithWeights(s.Config, s.Weights)
	for i, u := range s.Config.Uplinks {
		ur := UplinkReport{Name: u.Name, Interface: u.Interface, State: "down", Weight: weighted.Uplinks[i].Weight, Tier: u.Tier,
			WeightAuto: u.AutoWeight, Bandwidth: u.Bandwidth, Mark: Mark(s.Config.UplinkMark(i)), Loss: -1}
		ur.IPv4.Loss, ur.IPv6.Loss = -1, -1
		ur.Quota = s.quotaReport(u)
		if us, ok := s.Uplinks[u.Name]; ok {
			ur.State, ur.Reason, ur.Since, ur.Transitions = upDown(us.Up), us.Reason, us.Since, us.Transitions
			ur.Addresses = us.State.Addrs()
			if len(ur.Addresses) > 0 {
				ur.Address = ur.Addresses[0].String()
			}
			ur.Gateway = addrText(us.State.Family(inet.IPv4).Gateway)
			ur.Gateway6 = addrText(us.State.Family(inet.IPv6).Gateway)
			for _, f := range inet.Families {
				fs, obs := us.Families.Get(f), us.State.Family(f)
				*ur.Family(f) = FamilyReport{State: upDown(fs.Up), Reason: fs.Reason, Since: fs.Since,
					Addresses: obs.Addrs, Gateway: addrText(obs.Gateway), DNS: obs.DNS, Loss: -1}
			}
		}
		st.Uplinks = append(st.Uplinks, ur)
	}
	return st
}

// SetProbeFigures puts a family's latest probe round trip and loss into
// the report, and the uplink's own figures (IPv4's, else IPv6's).
func (u *UplinkReport) SetProbeFigures(f inet.Family, rtt time.Duration, loss float64) {
	fr := u.Family(f)
	fr.RTTms, fr.Loss = float64(rtt)/float64(time.Millisecond), loss
	u.RTTms, u.Loss = u.IPv4.RTTms, u.IPv4.Loss
	if u.Loss < 0 {
		u.RTTms, u.Loss = u.IPv6.RTTms, u.IPv6.Loss
	}
}
