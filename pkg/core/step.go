package core

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/neighbours"
	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
)

// Key names one address family of one uplink: health is probed and
// judged per family.
type Key struct {
	Uplink string
	Family inet.Family
}

// Verdict is what an uplink family's health probes said last.
type Verdict struct {
	Healthy bool
	Reason  string
}

// FamilyStatus is what the machine remembers of one family of an uplink.
type FamilyStatus struct {
	Up     bool // carries new connections of this family
	Reason string
	Since  time.Time
}

// UplinkStatus is what the machine remembers of one uplink.
type UplinkStatus struct {
	Name, Interface string
	Up              bool // some family carries new connections
	Reason          string
	Since           time.Time
	State           UplinkState
	Families        inet.PerFamily[FamilyStatus]
	Transitions     uint64
}

// ExecPin is one running `wanpin exec`: its cgroup's connections go to
// one uplink.
type ExecPin struct {
	Uplink string
	Cgroup policy.CgroupMatch
}

// State is everything the decisions depend on. Step never changes the
// State it is given: it returns the next one.
type State struct {
	Config      *config.Config
	Started     bool
	Links       map[string]Link // by interface name, from the latest snapshot
	Hints       map[string]Hint // by interface, from PPP hooks
	Probes      map[Key]ProbeSpec
	Verdicts    map[Key]Verdict
	Maintenance map[string]bool // uplinks the admin took out of service
	Cgroups     map[string][]policy.CgroupMatch
	Execs       map[string]ExecPin // by cgroup path
	Tuned       map[string]int     // interface -> ifindex whose rp_filter was set
	Leases      map[LeaseKey]Lease // what DHCP client hooks reported
	Tables      Tables             // the routing tables in use (AssignTables)
	// MPTCPManaged: an MPTCP apply with endpoints went out, so wanpin's
	// endpoints may be in the kernel: a reload that turns mptcp off must
	// remove them.
	MPTCPManaged bool
	Uplinks      map[string]UplinkStatus
	// Conflicts: what other programs on the router do that clashes with
	// wanpin's marks and rules, as last seen (pkg/neighbours).
	Conflicts []neighbours.Finding
	// RouteConflicts: routes of wanpin's that another program's routes
	// hold the place of, as the latest routing apply found them.
	RouteConflicts []RouteConflict
	// Quotas: the data quotas of the uplinks that have one, by uplink;
	// QuotaSaved is when their counts were last written, QuotaDirty
	// whether they grew since.
	Quotas     map[string]QuotaState
	QuotaSaved time.Time
	QuotaDirty bool
	// Weights: the adaptive weights in force of the weight = "auto"
	// uplinks (pkg/adaptive, from the AutoWeights inputs); an auto uplink
	// missing here has its prior (AutoPrior).
	Weights map[string]int
	// Pinned: the marks conntrack's entries were pinned with, while a
	// reload that changed them (mark_mask, the uplinks' order) is not
	// carried out yet: the next nftables apply is followed by a Repin.
	// RepinSent: that Repin went out, and is done unless the apply
	// before it failed (ApplyFailed follows such a step at once).
	Pinned    *PinnedMarks
	RepinSent bool
	// Desired is the latest computed kernel state; Applied what the kernel
	// holds as far as the machine knows (nil: unknown, apply all of it).
	Desired desired.State
	Applied *desired.State
}

// NewState is the state before Start.
func NewState(cfg *config.Config) State {
	return State{Config: cfg, Links: map[string]Link{}, Hints: map[string]Hint{}, Probes: map[Key]ProbeSpec{},
		Verdicts: map[Key]Verdict{}, Maintenance: map[string]bool{}, Cgroups: map[string][]policy.CgroupMatch{},
		Execs: map[string]ExecPin{}, Tuned: map[string]int{}, Leases: map[LeaseKey]Lease{}, Uplinks: map[string]UplinkStatus{},
		Quotas: map[string]QuotaState{}}
}

func (s State) clone() State {
	s.Links = maps.Clone(s.Links)
	s.Hints = maps.Clone(s.Hints)
	s.Probes = maps.Clone(s.Probes)
	s.Verdicts = maps.Clone(s.Verdicts)
	s.Maintenance = maps.Clone(s.Maintenance)
	s.Cgroups = maps.Clone(s.Cgroups)
	s.Execs = maps.Clone(s.Execs)
	s.Tuned = maps.Clone(s.Tuned)
	s.Leases = maps.Clone(s.Leases)
	s.Uplinks = maps.Clone(s.Uplinks)
	s.Quotas = maps.Clone(s.Quotas)
	s.Weights = maps.Clone(s.Weights)
	return s
}

// Input is one thing that happened.
type Input interface{ input() }

type (
	// Start: the daemon starts, with a first snapshot of the interfaces,
	// the policies' services resolved, the leases the DHCP hooks left and
	// the routing tables chosen, and the quotas' counts the state file
	// kept.
	Start struct {
		Links   map[string]Link
		Cgroups map[string][]policy.CgroupMatch
		Leases  map[LeaseKey]Lease
		Tables  Tables
		Quotas  map[string]quota.Usage
	}
	// TrafficReading: a reading of the uplinks' interface counters, bytes both
	// ways since the daemon started, by uplink (the traffic meter's; an
	// uplink whose interface does not exist is missing).
	TrafficReading struct {
		Bytes map[string]uint64
	}
	// AutoWeights: the estimator (pkg/adaptive) moved the weights of the
	// weight = "auto" uplinks by a step or more, for Reason. Only new
	// connections' shares change: nothing is re-pinned.
	AutoWeights struct {
		Weights map[string]int
		Reason  string
	}
	// QuotaCommand: `wanpin quota reset UPLINK` (Reset: the count starts
	// from zero) or `wanpin quota set UPLINK SIZE` (Limit, until the
	// next reload, restart or period).
	QuotaCommand struct {
		Uplink string
		Reset  bool
		Limit  uint64
	}
	// Observed: netlink said something changed; a fresh snapshot.
	Observed struct {
		Links   map[string]Link
		Trigger string // "netlink"
	}
	// HealthVerdict: a monitor's first verdict, or a change of verdict.
	HealthVerdict struct {
		Key
		Verdict
	}
	// SetService: `wanpin down/up UPLINK`.
	SetService struct {
		Uplink    string
		InService bool
	}
	// PPPEvent: a PPP hook's news (ip-up with the peer, or ip-down).
	PPPEvent struct {
		Up          bool
		Iface       string
		Local, Peer netip.Addr
		DNS         []netip.Addr
	}
	// LeaseEvent: a DHCP client's hook reported a lease (Lease set) or its
	// loss (nil).
	LeaseEvent struct {
		Key   LeaseKey
		Lease *Lease
	}
	// Reload: the policy file was read again and is good; its services
	// resolved.
	Reload struct {
		Config  *config.Config
		Cgroups map[string][]policy.CgroupMatch
		Tables  Tables
	}
	// ReloadRejected: it was bad; nothing changes.
	ReloadRejected struct{ Err error }
	// Services: the policies' services resolved afresh (a unit started,
	// stopped or restarted).
	Services struct {
		Cgroups map[string][]policy.CgroupMatch
	}
	// ExecStarted: `wanpin exec` made a cgroup and asks for it to be pinned.
	ExecStarted struct {
		Path, Uplink string
		Cgroup       policy.CgroupMatch
	}
	// Neighbours: what the conflict check found on the router now.
	Neighbours struct{ Findings []neighbours.Finding }
	// ExecEnded: its processes are gone.
	ExecEnded struct{ Path string }
	// Drift: the kernel lacks objects that were applied (listed as ip and
	// nft print them): the nftables tables, routing, or sysctls wanpin
	// depends on; only what is missing is applied again.
	Drift struct {
		Missing               []string
		NFT, Routing, Sysctls bool
	}
	// ApplyFailed: the kernel refused an apply.
	ApplyFailed struct{ Err error }
	// RoutingConflicts: a routing apply went through but left these
	// routes to the other programs whose routes hold their places (none:
	// no conflict). Applied stays as it was: the drift check leaves out
	// the routes still held by another program, and the ones that are free
	// again count as missing and are repaired.
	RoutingConflicts struct{ Conflicts []RouteConflict }
	// Retry: the RetryAfter timer fired; a fresh snapshot (and the lease
	// files, when they were read again).
	Retry struct {
		Links  map[string]Link
		Leases map[LeaseKey]Lease
	}
	// Stop: SIGTERM.
	Stop struct{}
)

func (Start) input()            {}
func (Observed) input()         {}
func (TrafficReading) input()   {}
func (AutoWeights) input()      {}
func (QuotaCommand) input()     {}
func (Neighbours) input()       {}
func (HealthVerdict) input()    {}
func (SetService) input()       {}
func (PPPEvent) input()         {}
func (LeaseEvent) input()       {}
func (Reload) input()           {}
func (ReloadRejected) input()   {}
func (Services) input()         {}
func (ExecStarted) input()      {}
func (ExecEnded) input()        {}
func (Drift) input()            {}
func (ApplyFailed) input()      {}
func (RoutingConflicts) input() {}
func (Retry) input()            {}
func (Stop) input()             {}

// globalSysctls are what policy routing with marks needs. Without
// src_valid_mark, the reverse-path filter validates a marked packet's
// source without its mark and drops replies on the non-default uplinks.
var globalSysctls = []Effect{SetSysctl{Key: "net/ipv4/conf/all/src_valid_mark", Value: "1"}}

// GlobalSysctls is what the drift check compares.
func GlobalSysctls() []SetSysctl {
	var out []SetSysctl
	for _, e := range globalSysctls {
		out = append(out, e.(SetSysctl))
	}
	return out
}

// RetryDelay is how long after a failed apply everything is applied again.
const RetryDelay = time.Second

// Result is what one Step gives: the next state, the effects in order,
// and for requests (SetService, PPPEvent, ExecStarted, Reload*) the
// refusal to hand back to whoever asked.
type Result struct {
	State   State
	Effects []Effect
	Err     error
}

// Step is the machine: the next state and ordered effects for one input
// at time at. It is pure and deterministic.
//
// The order of effects when an uplink family goes down is the safety
// property the step tests pin: the nftables table first (in one
// transaction the uplink leaves the balancing and its packets stop being
// routed), then its routes, then its conntrack entries, so that a flow's
// next packet finds a live uplink. Otherwise routes go first, so that a
// mark handed out by the new table always finds its route.
func Step(prev State, at time.Time, in Input) Result {
	s := prev.clone()
	r := &Result{}
	if _, failed := in.(ApplyFailed); !failed && s.RepinSent {
		// The previous step's Repin followed an apply that did not fail:
		// the entries carry the marks of the configuration in force.
		s.Pinned, s.RepinSent = nil, false
	}
	switch in := in.(type) {
	case Start:
		s.Started = true
		s.Links, s.Cgroups, s.Tables = in.Links, in.Cgroups, in.Tables
		if in.Leases != nil {
			s.Leases = maps.Clone(in.Leases)
		}
		r.log(slog.LevelInfo, "starting", "config", s.Config.Path, "uplinks", len(s.Config.Uplinks), "policies", len(s.Config.Policies))
		logCgroups(r, nil, in.Cgroups)
		s.QuotaSaved = at
		if s.syncQuotas(r, at, in.Quotas, true) {
			s.saveQuotas(r, at)
		}
		why := map[string]string{}
		for _, u := range s.Config.Uplinks {
			if q, ok := s.Quotas[u.Name]; ok {
				why[u.Name] = "counted before wanpin started (the state file)"
				r.log(slog.LevelInfo, "quota", "uplink", u.Name, "used", q.Used, "quota", q.Limit, "action", string(u.Quota.Action),
					"state", q.describe(u.Quota))
			}
		}
		s.noteQuotas(r, why)
		r.add(globalSysctls...)
		s.syncProbes(r)
		s.reconcile(r, at, "start")
		r.add(Notify{State: "READY=1"})
	case Observed:
		s.Links = in.Links
		s.reconcile(r, at, in.Trigger)
	case Neighbours:
		s.noteConflicts(r, in.Findings)
	case TrafficReading:
		s.countTraffic(r, at, in.Bytes)
	case AutoWeights:
		s.autoWeights(r, at, in)
	case QuotaCommand:
		s.quotaCommand(r, at, in)
	case HealthVerdict:
		if _, ok := s.Probes[in.Key]; !ok {
			break // from a monitor stopped since: its verdict is void
		}
		s.Verdicts[in.Key] = in.Verdict
		s.reconcile(r, at, "health probes")
	case SetService:
		if r.Err = s.checkUplink(in.Uplink); r.Err != nil {
			break
		}
		if in.InService {
			delete(s.Maintenance, in.Uplink)
		} else {
			s.Maintenance[in.Uplink] = true
		}
		r.log(slog.LevelInfo, "maintenance", "uplink", in.Uplink, "in_service", in.InService)
		s.reconcile(r, at, "admin")
	case PPPEvent:
		if !slices.ContainsFunc(s.Config.Uplinks, func(u config.Uplink) bool { return u.Interface == in.Iface }) {
			kind := map[bool]string{true: "up", false: "down"}[in.Up]
			r.Err = fmt.Errorf("event %s %s: no uplink uses interface %s", kind, in.Iface, in.Iface)
			break
		}
		kind := "down"
		if in.Up {
			kind = "up"
			s.Hints[in.Iface] = Hint{Peer: in.Peer, DNS: in.DNS}
		} else {
			s.Hints[in.Iface] = Hint{Down: true, Since: at}
		}
		r.log(slog.LevelInfo, "ppp event", "kind", kind, "interface", in.Iface, "local", addrText(in.Local), "peer", addrText(in.Peer),
			"dns", fmt.Sprint(in.DNS))
		s.reconcile(r, at, "ppp ip-"+kind)
	case LeaseEvent:
		if !slices.ContainsFunc(s.Config.Uplinks, func(u config.Uplink) bool { return u.Interface == in.Key.Interface }) {
			// A DHCP client of an interface no uplink uses (the LAN's
			// own, Debian's dhcpcd on every interface) reports through
			// the same hooks: not an error, which the hook would log at
			// every renewal. The lease is kept for a reload that makes
			// the interface an uplink, as its file is.
			if in.Lease == nil {
				delete(s.Leases, in.Key)
			} else {
				s.Leases[in.Key] = *in.Lease
			}
			break
		}
		if in.Lease == nil {
			if _, had := s.Leases[in.Key]; !had {
				break
			}
			delete(s.Leases, in.Key)
			r.log(slog.LevelInfo, "lease lost", "interface", in.Key.Interface, "family", in.Key.Family.String())
		} else {
			if old, had := s.Leases[in.Key]; had && reflect.DeepEqual(old, *in.Lease) {
				break // a renewal that changes nothing
			}
			s.Leases[in.Key] = *in.Lease
			r.log(slog.LevelInfo, "lease", "interface", in.Key.Interface, "family", in.Key.Family.String(),
				"address", in.Lease.Address.String(), "gateways", fmt.Sprint(in.Lease.Gateways), "dns", fmt.Sprint(in.Lease.DNS),
				"client", in.Lease.Client)
		}
		s.reconcile(r, at, "dhcp lease")
	case Reload:
		r.add(Notify{State: "RELOADING=1"})
		logCgroups(r, s.Cgroups, in.Cgroups)
		if s.Pinned == nil {
			// Still owed after a failed apply, the earlier marks stand:
			// the entries never got the ones in between.
			s.Pinned = pinnedMarks(s.Config)
		}
		if repinFor(s.Pinned, in.Config) == nil {
			s.Pinned = nil
		}
		s.Config, s.Cgroups, s.Tables = in.Config, in.Cgroups, in.Tables
		s.pruneWeights()
		// Probes follow the new configuration; verdicts of uplinks whose
		// probing did not change are kept.
		s.syncProbes(r)
		r.log(slog.LevelInfo, "configuration reloaded", "uplinks", len(s.Config.Uplinks), "policies", len(s.Config.Policies))
		saveQuota := s.syncQuotas(r, at, nil, false)
		why := map[string]string{}
		for _, u := range s.Config.Uplinks {
			if u.Quota != nil {
				why[u.Name] = "the reloaded file's quota is " + quota.FormatSize(u.Quota.Limit)
			}
		}
		if s.noteQuotas(r, why) || saveQuota {
			s.saveQuotas(r, at)
		}
		s.Applied = nil
		s.reconcile(r, at, "reload")
		r.add(Notify{State: "READY=1"})
	case ReloadRejected:
		r.add(Notify{State: "RELOADING=1"})
		r.log(slog.LevelError, "reload rejected, keeping the running configuration", "err", in.Err)
		r.add(Notify{State: "READY=1"})
		r.Err = in.Err
	case Services:
		if reflect.DeepEqual(in.Cgroups, s.Cgroups) {
			break
		}
		logCgroups(r, s.Cgroups, in.Cgroups)
		s.Cgroups = in.Cgroups
		s.reconcile(r, at, "service cgroup changed")
	case ExecStarted:
		if r.Err = s.CheckExec(in.Uplink); r.Err != nil {
			break
		}
		if r.Err = CheckExecPath(in.Path); r.Err != nil {
			break
		}
		s.Execs[in.Path] = ExecPin{Uplink: in.Uplink, Cgroup: in.Cgroup}
		r.log(slog.LevelInfo, "exec pinned", "cgroup", in.Path, "uplink", in.Uplink)
		s.reconcile(r, at, "exec")
	case ExecEnded:
		if _, ok := s.Execs[in.Path]; !ok {
			break
		}
		delete(s.Execs, in.Path)
		r.log(slog.LevelInfo, "exec ended", "cgroup", in.Path)
		s.reconcile(r, at, "exec ended")
	case Drift:
		if s.Applied == nil {
			break // a retry is pending and will apply everything
		}
		missing := slices.Sorted(slices.Values(in.Missing))
		r.log(slog.LevelWarn, "repairing state another program changed", "missing", fmt.Sprint(missing))
		if in.Sysctls {
			r.add(globalSysctls...)
			s.Tuned = map[string]int{}
		}
		applied := *s.Applied
		if in.NFT {
			applied.NFT = desired.NFT{}
		}
		if in.Routing {
			applied.Routing = desired.Routing{}
		}
		s.Applied = &applied
		s.reconcile(r, at, "drift repair")
	case ApplyFailed:
		r.log(slog.LevelError, "applying state", "err", in.Err)
		s.Applied = nil
		// The executor skips a Repin after a failed apply (the kernel
		// kept the old table, whose marks the entries still carry): it
		// is owed to the next apply.
		s.RepinSent = false
		r.add(RetryAfter{After: RetryDelay})
	case RoutingConflicts:
		s.noteRouteConflicts(r, in.Conflicts)
	case Retry:
		s.Links = in.Links
		if in.Leases != nil {
			s.Leases = maps.Clone(in.Leases)
		}
		s.Applied = nil
		s.reconcile(r, at, "retry")
	case Stop:
		r.add(Notify{State: "STOPPING=1"})
		for _, k := range sortedKeys(s.Probes) {
			r.add(StopProbes{Key: k})
		}
		s.Probes = map[Key]ProbeSpec{}
		s.saveQuotas(r, at)
		r.add(Teardown{})
	default:
		panic(fmt.Sprintf("core: unknown input %T", in))
	}
	r.State = s
	return *r
}

// logCgroups logs each service whose cgroups changed.
func logCgroups(r *Result, old, cur map[string][]policy.CgroupMatch) {
	for _, svc := range slices.Sorted(maps.Keys(cur)) {
		if m, was := cur[svc], old[svc]; old == nil || !reflect.DeepEqual(m, was) {
			r.log(slog.LevelInfo, "service cgroup", "service", svc, "matches", fmt.Sprint(m))
		}
	}
}

func (r *Result) add(e ...Effect) { r.Effects = append(r.Effects, e...) }

func (r *Result) log(level slog.Level, msg string, attrs ...any) {
	r.add(Log{Level: level, Msg: msg, Attrs: attrs})
}

func (s *State) checkUplink(name string) error {
	for _, u := range s.Config.Uplinks {
		if u.Name == name {
			return nil
		}
	}
	return fmt.Errorf("no uplink named %q", name)
}

// CheckExec refuses `wanpin exec --uplink` to an uplink that does not
// exist or is down (failed, or taken out of service): the command's
// connections would all be rejected (its policy has no bucket), so it is
// refused up front, as the README promises, rather than run cut off. The
// daemon asks before it makes the cgroup, so that a refusal leaves none
// behind; ExecStarted asks again.
func (s *State) CheckExec(uplink string) error {
	if err := s.checkUplink(uplink); err != nil {
		return err
	}
	if st := s.Uplinks[uplink]; !st.Up {
		why := st.Reason
		if why == "" {
			why = "not known to be up yet"
		}
		return fmt.Errorf("uplink %q is down (%s): the command's connections would all be refused", uplink, why)
	}
	return nil
}

// ExecRoot is the cgroup under which `wanpin exec` makes one cgroup per
// command.
const ExecRoot = "/wanpin-exec"

// CheckExecPath accepts only a cgroup `wanpin exec` makes: one level
// under ExecRoot, named by its pid.
func CheckExecPath(p string) error {
	dir, name := path.Split(p)
	if path.Clean(p) != p || dir != ExecRoot+"/" || name == "" || strings.Trim(name, "0123456789") != "" {
		return fmt.Errorf("cgroup %q is not one of wanpin exec's (%s/<pid>)", p, ExecRoot)
	}
	return nil
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// verdict is what health probes say of one family of an uplink (st, as
// the interface shows it): its own targets' verdict, or, when it has no
// targets of its own, the other family's (an ISP that forwards nothing
// usually forwards neither family, and an admin who lists only IPv4
// targets expects them to guard the uplink as a whole) while that family
// can carry traffic. A family with no address or gateway (a DHCP lease
// gone) cannot send its probes: their lost rounds say nothing of the
// ISP, and borrowed they took the working IPv6 down with the lease.
func (s *State) verdict(uplink string, f inet.Family, st UplinkState) (Verdict, bool) {
	k := Key{uplink, f}
	if _, own := s.Probes[k]; !own {
		if !st.Family(f.Other()).Up {
			return Verdict{}, false
		}
		k.Family = f.Other()
	}
	v, ok := s.Verdicts[k]
	return v, ok
}

// hint returns the PPP hook's hint for an interface, binding it to the
// interface instance it was given for: a PPP link that is re-dialled gets
// a new interface index, and an old session's hint must not stick to it.
// An ip-down older than DownHintHold is dropped and logged. name is the
// uplink's interface: l is the zero Link when it does not exist.
func (s *State) hint(r *Result, name string, l Link, at time.Time) Hint {
	h, ok := s.Hints[name]
	if !ok {
		return Hint{}
	}
	switch {
	case !l.Exists && h.Down:
		// ip-down, then the interface went away: the hint did its job.
		delete(s.Hints, name)
		return Hint{}
	case !l.Exists:
		return h
	case h.Down && at.Sub(h.Since) >= DownHintHold:
		delete(s.Hints, name)
		r.log(slog.LevelWarn, "ppp ip-down not confirmed by the kernel, going by the interface's state", "interface", name,
			"after", DownHintHold.String())
		return Hint{}
	case h.Index == 0:
		h.Index = l.Index
		s.Hints[name] = h
	case h.Index != l.Index:
		delete(s.Hints, name)
		return Hint{}
	}
	return h
}

// nextHintExpiry is how long until the oldest ip-down still standing
// reaches DownHintHold: the step must look again then, or a stray one
// would hold the uplink down until some other event.
func (s *State) nextHintExpiry(at time.Time) (time.Duration, bool) {
	var wait time.Duration
	found := false
	for _, h := range s.Hints {
		if !h.Down {
			continue
		}
		if w := max(h.Since.Add(DownHintHold).Sub(at), 0); !found || w < wait {
			wait, found = w, true
		}
	}
	return wait, found
}

// cameUpFamily is one family of an uplink that came up in this step.
type cameUpFamily struct {
	Uplink string
	Tier   int
	Family inet.Family
}

// failbacks lists what failback = "move" asks for: when a family of an
// uplink comes back, the connections of that family pinned to an uplink
// of a worse tier that moves its connections are moved off it (the
// balancer no longer gives it new ones: only the best tier with an
// uplink up carries traffic). An uplink whose data quota is used up is
// worse than every uplink whose quota is not: its connections move when
// the quota is used up (spent) and another uplink can take them, and
// when another uplink comes back. An uplink that went down meanwhile was
// flushed already.
func failbacks(cfg *config.Config, cameUp []cameUpFamily, spent map[string]bool, states map[string]UplinkState) []Effect {
	better := func(c string, ct int, u config.Uplink) bool {
		if ce, ue := states[c].Exhausted, states[u.Name].Exhausted; ce != ue {
			return ue
		}
		return ct < u.Tier
	}
	var out []Effect
	for i, u := range cfg.Uplinks {
		if u.Failback != config.FailbackMove {
			continue
		}
		for _, f := range inet.Families {
			if !states[u.Name].Family(f).Usable() {
				continue
			}
			to, why := "", ""
			for _, c := range cameUp {
				if c.Family == f && better(c.Uplink, c.Tier, u) && (to == "" || c.Uplink < to) {
					to, why = c.Uplink, c.Uplink+" is back and "+u.Name+" has failback = move"
				}
			}
			if to == "" && spent[u.Name] {
				// The best uplink of this family whose quota is not used up.
				tier := 0
				for _, v := range cfg.Uplinks {
					if st := states[v.Name]; v.Name != u.Name && st.Family(f).Usable() && !st.Exhausted && (tier == 0 || v.Tier < tier) {
						to, tier = v.Name, v.Tier
					}
				}
				why = u.Name + "'s data quota is used up and it has failback = move"
			}
			if to != "" {
				out = append(out, Failback{Uplink: u.Name, To: to, Family: f,
					Mark: cfg.UplinkMark(i), Mask: cfg.MarkMask, Evict: cfg.EvictMark(), Reason: why})
			}
		}
	}
	return out
}

// strandedFlushes: while no uplink could carry a family, its connections
// went wherever the main table sent them, and postrouting pinned each to
// the uplink it left by though that uplink was down (the pin records
// where the NAT bound it). Their up→down flush is long past, and a UDP
// flow with a fixed 5-tuple (VoIP, a VPN) refreshes its entry with every
// packet: it would stay on the dead uplink for good. So when the first
// uplink of a family comes back, the entries of the family's uplinks that
// are still down go, and their next packet is balanced onto the live one.
func strandedFlushes(cfg *config.Config, cameUp []cameUpFamily, hadUsable inet.PerFamily[bool], states map[string]UplinkState) []Effect {
	var out []Effect
	for _, f := range inet.Families {
		if hadUsable.Get(f) || !slices.ContainsFunc(cameUp, func(c cameUpFamily) bool { return c.Family == f }) {
			continue
		}
		for i, u := range cfg.Uplinks {
			// One without an address of the family had nothing pinned:
			// nothing leaves it untranslatable.
			if fs := states[u.Name].Family(f); !fs.Usable() && len(fs.Addrs) > 0 {
				out = append(out, FlushMark{Uplink: u.Name, Family: f, Mark: cfg.UplinkMark(i), Mask: cfg.MarkMask,
					Reason: "pinned while no uplink was up"})
			}
		}
	}
	return out
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// reconcile observes the uplinks, notes the transitions, recomputes the
// desired state and lists what must change, in the safe order.
func (s *State) reconcile(r *Result, at time.Time, trigger string) {
	cfg := s.Config
	states := map[string]UplinkState{}
	wentDown := false
	var flushes []Effect
	var hooks []Effect
	var cameUp []cameUpFamily
	spent := map[string]bool{} // quotas used up in this step
	oldAddrs := map[string][]netip.Addr{}
	var hadUsable inet.PerFamily[bool] // some known uplink could carry the family
	for name, st := range s.Uplinks {
		oldAddrs[name] = st.State.Addrs()
		for _, f := range inet.Families {
			if st.Families.Get(f).Up {
				*hadUsable.Of(f) = true
			}
		}
	}
	seen := map[string]bool{}
	for i, u := range cfg.Uplinks {
		seen[u.Name] = true
		l := s.Links[u.Interface]
		leases := map[inet.Family]Lease{}
		for _, f := range inet.Families {
			if lease, ok := s.Leases[LeaseKey{u.Interface, f}]; ok {
				leases[f] = lease
			}
		}
		st, rs := Observe(u, l, s.hint(r, u.Interface, l, at), leases)
		s.restartProbesAfterBlip(r, u.Name, st)
		for _, f := range inet.Families {
			if v, ok := s.verdict(u.Name, f, st); ok && !v.Healthy && st.Family(f).Up {
				st.Of(f).Unhealthy = true
				*rs.Of(f) = "health probes: " + v.Reason
			}
		}
		if s.Maintenance[u.Name] && st.LinkUp() {
			// Forced out of service by the admin: routes stay (so it can
			// be tested by hand), new connections avoid it.
			st.SetUnhealthy()
			why := "taken out of service by the admin (wanpin down " + u.Name + ")"
			rs = Reasons{why, why}
		}
		if !s.Maintenance[u.Name] {
			s.quotaSpent(u, &st, &rs)
		}
		if prev, ok := s.Uplinks[u.Name]; ok && st.Exhausted && !prev.State.Exhausted {
			spent[u.Name] = true
		}
		reason := oneReason(rs, st)
		states[u.Name] = st
		if l.Exists && s.Tuned[l.Name] != l.Index {
			// Set again when the interface is re-created (new ifindex).
			r.add(LoosenRPFilter{Interface: l.Name})
			s.Tuned[l.Name] = l.Index
		}
		old, known := s.Uplinks[u.Name]
		if !known || old.Interface != u.Interface {
			old = UplinkStatus{Name: u.Name, Interface: u.Interface, Since: at}
			for _, f := range inet.Families {
				old.Families.Of(f).Since = at
			}
		}
		for _, f := range inet.Families {
			up := st.Family(f).Usable()
			fst := old.Families.Of(f)
			if known && fst.Up && !up {
				wentDown = true
				flushes = append(flushes, FlushMark{Uplink: u.Name, Family: f, Mark: cfg.UplinkMark(i), Mask: cfg.MarkMask, Reason: "uplink down"})
			}
			if known && !fst.Up && up {
				cameUp = append(cameUp, cameUpFamily{Uplink: u.Name, Tier: u.Tier, Family: f})
			}
			if known && fst.Up != up {
				r.log(slog.LevelInfo, "uplink "+f.String()+" "+upDown(up), "uplink", u.Name, "interface", u.Interface,
					"family", f.String(), "reason", rs.Get(f), "trigger", trigger)
				fst.Since = at
			}
			fst.Up, fst.Reason = up, rs.Get(f)
		}
		if !known || old.Up != st.Up() {
			r.log(slog.LevelInfo, "uplink "+upDown(st.Up()), "uplink", u.Name, "interface", u.Interface, "reason", reason, "trigger", trigger)
			if known {
				old.Transitions++
				hooks = append(hooks, RunHooks{Uplink: u.Name, Interface: u.Interface, State: upDown(st.Up()), Reason: reason})
			}
			old.Since = at
		}
		old.Up, old.State, old.Reason = st.Up(), st, reason
		s.Uplinks[u.Name] = old
	}
	for name := range s.Uplinks {
		if !seen[name] {
			delete(s.Uplinks, name)
		}
	}
	flushes = append(flushes, strandedFlushes(cfg, cameUp, hadUsable, states)...)
	want := Build(Facts{Config: cfg, Uplinks: states, Cgroups: s.Cgroups, Execs: s.execList(), Tables: s.Tables, Weights: s.Weights})
	s.Desired = want
	var applies []Effect
	if s.Applied == nil || !reflect.DeepEqual(s.Applied.Routing, want.Routing) {
		applies = append(applies, ApplyRouting{Routing: want.Routing})
	}
	if s.Applied == nil || !reflect.DeepEqual(s.Applied.NFT, want.NFT) {
		nft := ApplyNFT{NFT: want.NFT}
		if wentDown {
			applies = append([]Effect{nft}, applies...)
		} else {
			applies = append(applies, nft)
		}
	}
	// A reload that changed the marks: the pinned connections get their
	// uplink's new mark right after the table that knows the new marks,
	// not before it: until then the old table restores the marks, and
	// a new one would read as no uplink's (the connection followed the
	// main table) or as another uplink's. Between the two the new table
	// misreads the old marks the same way, so the gap is kept to one
	// effect: a packet in it may be lost (TCP sends it again), and one
	// that leaves unpinned by another uplink is re-pinned there by the
	// table, which the Repin undoes (it clears every bit of both masks).
	if s.Pinned != nil && !s.RepinSent {
		if i := slices.IndexFunc(applies, func(e Effect) bool { _, ok := e.(ApplyNFT); return ok }); i >= 0 {
			if rp := repinFor(s.Pinned, cfg); rp != nil {
				applies = slices.Insert(applies, i+1, Effect(*rp))
				s.RepinSent = true
			} else {
				s.Pinned = nil
			}
		}
	}
	// After the routing: an endpoint's subflows need its source rule.
	if s.Applied == nil && (want.MPTCP.Enabled || s.MPTCPManaged) || s.Applied != nil && !reflect.DeepEqual(s.Applied.MPTCP, want.MPTCP) {
		applies = append(applies, ApplyMPTCP{MPTCP: want.MPTCP})
		s.MPTCPManaged = want.MPTCP.Enabled
	}
	r.Effects = append(r.Effects, applies...)
	s.Applied = &want
	// Only now, with the uplink out of the balancing and its packets
	// dropped, are its conntrack entries flushed: a new packet of such a
	// flow (a UDP stream with a fixed 5-tuple) then starts a new entry on
	// a live uplink instead of finding the dead one again.
	r.Effects = append(r.Effects, flushes...)
	// Failback, after the apply that gives new connections to the better
	// tier again: the connections of worse tiers' uplinks that move
	// theirs go too.
	r.Effects = append(r.Effects, failbacks(cfg, cameUp, spent, states)...)
	for _, u := range cfg.Uplinks {
		now := s.Uplinks[u.Name].State.Addrs()
		for _, a := range oldAddrs[u.Name] {
			if !slices.Contains(now, a) {
				r.add(FlushAddr{Uplink: u.Name, Addr: a})
			}
		}
	}
	r.Effects = append(r.Effects, hooks...)
	if wait, ok := s.nextHintExpiry(at); ok {
		r.add(ObserveAfter{After: wait})
	}
}

// PinnedMarks is the mark mask and each uplink's mark (by name, in file
// order) of one configuration: what its table pinned connections with.
type PinnedMarks struct {
	Mask    uint32
	Uplinks []PinnedUplink
}

// PinnedUplink is one uplink's mark in PinnedMarks.
type PinnedUplink struct {
	Name string
	Mark uint32
}

func pinnedMarks(cfg *config.Config) *PinnedMarks {
	p := &PinnedMarks{Mask: cfg.MarkMask}
	for i, u := range cfg.Uplinks {
		p.Uplinks = append(p.Uplinks, PinnedUplink{Name: u.Name, Mark: cfg.UplinkMark(i)})
	}
	return p
}

// repinFor is what moves the connections pinned with from to cfg's
// marks, or nil when none has to move. An uplink is followed by name:
// one whose mark or the mask changed (both are in the rewrite: the new
// mask's bits outside the old one were not wanpin's) moves to its new
// mark; one that is gone is flushed, as a down uplink's connections are:
// left alone, its mark would mean no uplink to the new table (the
// connection would follow the main table out of another uplink with the
// removed one's address) or another uplink's, and a UDP flow with a
// fixed 5-tuple would never be balanced afresh.
func repinFor(from *PinnedMarks, cfg *config.Config) *Repin {
	rp := Repin{OldMask: from.Mask, NewMask: cfg.MarkMask}
	old := map[string]uint32{}
	for _, u := range from.Uplinks {
		old[u.Name] = u.Mark
	}
	kept := map[string]bool{}
	for i, u := range cfg.Uplinks {
		m, ok := old[u.Name]
		if !ok {
			continue // new: nothing is pinned to it
		}
		kept[u.Name] = true
		if m != cfg.UplinkMark(i) || from.Mask != cfg.MarkMask {
			rp.Moves = append(rp.Moves, MarkMove{Uplink: u.Name, Old: m, New: cfg.UplinkMark(i)})
		}
	}
	for _, u := range from.Uplinks {
		if !kept[u.Name] {
			rp.Moves = append(rp.Moves, MarkMove{Uplink: u.Name, Old: u.Mark})
		}
	}
	if len(rp.Moves) == 0 {
		return nil
	}
	return &rp
}

// noteConflicts keeps the latest findings and logs the new ones in one
// line when they appear (a VPN started after wanpin), and the ones gone.
func (s *State) noteConflicts(r *Result, now []neighbours.Finding) {
	key := func(f neighbours.Finding) string { return f.ID + "\x00" + f.Breaks }
	had, seen := map[string]bool{}, map[string]bool{}
	for _, f := range s.Conflicts {
		had[key(f)] = true
	}
	var fresh, gone []neighbours.Finding
	for _, f := range now {
		seen[key(f)] = true
		if !had[key(f)] {
			fresh = append(fresh, f)
		}
	}
	for _, f := range s.Conflicts {
		if !seen[key(f)] {
			gone = append(gone, f)
		}
	}
	if len(fresh) > 0 {
		level, ids, progs, details := slog.LevelWarn, []string{}, []string{}, []string{}
		for _, f := range fresh {
			if f.Severity == neighbours.Breaking && !f.Allowed {
				level = slog.LevelError
			}
			ids = append(ids, f.ID)
			if f.Program != "" && !slices.Contains(progs, f.Program) {
				progs = append(progs, f.Program)
			}
			details = append(details, f.Level+": "+f.String())
		}
		r.log(level, "other programs' rules clash with wanpin's", "ids", strings.Join(ids, ", "),
			"programs", strings.Join(progs, ", "), "findings", strings.Join(details, "; "))
	}
	if len(gone) > 0 {
		var ids []string
		for _, f := range gone {
			ids = append(ids, f.ID)
		}
		r.log(slog.LevelInfo, "clash gone", "ids", strings.Join(ids, ", "))
	}
	s.Conflicts = slices.Clone(now)
}

// restartProbesAfterBlip gives a fresh monitor to a family whose link
// came back (carrier, address, gateway) while its probes still called it
// healthy: the outage was shorter than they take to notice one, and the
// rounds sent while it lasted are still in flight. Left to run out they
// would take the family down just after it came back, and hold it down
// for up_after rounds and hold_down (seen in CI: a 0.95 s carrier loss,
// IPv6 down 0.18 s after the carrier returned). A family the probes
// already called down keeps its monitor: it comes back by their rules;
// unless it was out alone (its address or gateway gone, a DHCP lease,
// while the other family stayed up: the link was fine), when its probes
// could not be sent and their lost rounds say nothing of the ISP. Kept,
// that verdict held the family down for up_after rounds and hold_down
// after the lease came back, and the other family, if it has no targets
// of its own, with it (its connections flushed).
func (s *State) restartProbesAfterBlip(r *Result, uplink string, st UplinkState) {
	prev, known := s.Uplinks[uplink]
	if !known {
		return
	}
	for _, f := range inet.Families {
		k := Key{uplink, f}
		spec, probed := s.Probes[k]
		if !probed || prev.State.Family(f).Up || !st.Family(f).Up {
			continue
		}
		why := "the link came back before the probes noticed it was gone"
		if v, ok := s.Verdicts[k]; ok && !v.Healthy {
			if !prev.State.Family(f.Other()).Up || !st.Family(f.Other()).Up {
				continue
			}
			why = "the family was out alone: its probes could not be sent"
		}
		r.add(StopProbes{Key: k}, StartProbes{Spec: spec})
		delete(s.Verdicts, k)
		r.log(slog.LevelInfo, "health probes restarted", "uplink", uplink, "family", f.String(), "why", why)
	}
}

// execList is the plan's view of the running execs, in a stable order.
func (s *State) execList() []Exec {
	var out []Exec
	for p, e := range s.Execs {
		out = append(out, Exec{Name: "exec_" + path.Base(p), Uplink: e.Uplink, Cgroup: e.Cgroup})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ProbeSpecs is one monitor per uplink and family that has health targets
// of that family.
func ProbeSpecs(cfg *config.Config) map[Key]ProbeSpec {
	want := map[Key]ProbeSpec{}
	for i, u := range cfg.Uplinks {
		if u.Health == nil {
			continue
		}
		for _, f := range inet.Families {
			if hc := u.Health.ForFamily(f); hc != nil {
				k := Key{u.Name, f}
				want[k] = ProbeSpec{Key: k, Interface: u.Interface, Mark: cfg.UplinkMark(i), Config: *hc}
			}
		}
	}
	return want
}

// syncProbes starts and stops monitors to match the configuration:
// monitors whose spec is unchanged keep running (and their verdict
// stands); the others are stopped, restarted, and their verdict forgotten.
func (s *State) syncProbes(r *Result) {
	want := ProbeSpecs(s.Config)
	for _, k := range sortedKeys(s.Probes) {
		if spec, ok := want[k]; ok && reflect.DeepEqual(spec, s.Probes[k]) {
			delete(want, k)
			continue
		}
		r.add(StopProbes{Key: k})
		delete(s.Probes, k)
		delete(s.Verdicts, k)
	}
	for _, k := range sortedKeys(want) {
		spec := want[k]
		r.add(StartProbes{Spec: spec})
		r.log(slog.LevelInfo, "health probes started", "uplink", k.Uplink, "family", k.Family.String(),
			"method", spec.Config.Method, "targets", len(spec.Config.Targets), "interval", spec.Config.Interval.String())
		s.Probes[k] = spec
	}
	for k := range s.Verdicts {
		if _, ok := s.Probes[k]; !ok {
			delete(s.Verdicts, k)
		}
	}
}

func sortedKeys[V any](m map[Key]V) []Key {
	ks := slices.Collect(maps.Keys(m))
	slices.SortFunc(ks, func(a, b Key) int {
		if c := strings.Compare(a.Uplink, b.Uplink); c != 0 {
			return c
		}
		return int(a.Family) - int(b.Family)
	})
	return ks
}
