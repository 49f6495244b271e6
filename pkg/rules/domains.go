package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/dnslearn"
	"github.com/wanpin/wanpin/pkg/inet"
)

// LearnedSize is the most addresses one learned set (a domain policy's,
// per family) holds. The daemon adds what DNS answers teach, and a LAN
// host can ask for as many names under a domain as it likes: a full set
// refuses more (the daemon counts them), and past it only steering of
// the newest addresses is lost.
const LearnedSize = 65535

const (
	// setDNSAlive holds `udp` and `tcp` while the daemon's learner runs,
	// each with a timeout the daemon keeps refreshing: the hold rules
	// look it up, so when the daemon dies (SIGKILL, a crash) they stop
	// matching within DNSAliveTimeout and DNS answers flow unlearned,
	// never dropped for good.
	setDNSAlive     = "dns_alive"
	setDNSIfaces    = "dns_ifaces"
	chainDNSHold    = "dns_hold"
	chainDNSHoldOut = "dns_hold_out"
	chainDNSIn      = "dns_in"
	chainDNSHeld    = "dns_held"
	chainDNSCopy    = "dns_copy"
	dnsHoldSnap     = 65535
	// ctStatusSNAT is IPS_SRC_NAT (linux/netfilter/nf_conntrack_common.h).
	ctStatusSNAT = 1 << 4
	dnsPort      = 53
	// dnsAliveCap has room for a refresh: the kernel counts an element
	// added again against the set's size before it finds it there (and
	// refuses with ENFILE when full), so a set of size 2 holding udp and
	// tcp could never be refreshed.
	dnsAliveCap   = 8
	nfLogSnaplen  = 1 << unix.NFTA_LOG_SNAPLEN
	nfLogGroup    = 1 << unix.NFTA_LOG_GROUP
	nfLogPrefix   = 1 << unix.NFTA_LOG_PREFIX
	priorityRawNo = -300
)

// DNSHoldRate bounds the answers held per second (and the burst): past
// it answers pass unlearned, so that a LAN host flooding DNS can cost the
// learner at most this many answers a second and never delays or loses
// other hosts' answers in a full NFLOG queue.
const DNSHoldRate = 2000

// DNSAliveTimeout is how long the hold rules go on holding after the
// daemon's last refresh of dns_alive; the daemon refreshes it every
// third of that.
const DNSAliveTimeout = 10 * time.Second

// DomainSet is one learned set of a table: the addresses of one family
// the DNS answers for a policy's domains gave.
type DomainSet struct {
	Name    string
	Policy  string
	Family  inet.Family
	Domains []string
}

// DomainSets lists the learned sets s's table has, as Apply creates them
// (a policy that compiled to no rules has none).
func DomainSets(s desired.NFT) []DomainSet { return build(s).domains }

// AppliedDomainSets is DomainSets of the table the last successful Apply
// made, without building it again.
func (m *Manager) AppliedDomainSets() []DomainSet {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.domains
}

// learnedSet records a policy's learned set, made by fromPolicySet.
func (b *builder) learnedSet(name string, pol desired.Policy, f inet.Family) {
	if slices.ContainsFunc(b.t.domains, func(d DomainSet) bool { return d.Name == name }) {
		return
	}
	b.t.domains = append(b.t.domains, DomainSet{Name: name, Policy: pol.Name, Family: f, Domains: pol.Match.Domains})
}

// dnsHold holds DNS answers for the daemon's learner, which adds what
// they teach to the sets and then re-injects them (see pkg/dnslearn):
//
//   - Answers arriving from an uplink for a LAN host (masqueraded, or
//     routed to a LAN address) are held in prerouting, after conntrack and
//     before dstnat: re-injected, the answer is the reply conntrack
//     expects, NAT undoes the masquerade in the output hook and the
//     router's firewall sees it established.
//   - Answers arriving from an uplink for the router itself are only
//     copied: re-injected, an answer for the router reaches its socket
//     through lo, and a socket bound to the uplink's device (systemd-
//     resolved's per-link servers, dnsmasq's server=...@wan, wanpin's own
//     DNS probes) never gets it.
//   - Answers the router's own resolvers send (to LAN hosts, to local
//     programs through lo: dnsmasq, unbound, systemd-resolved's stub) are
//     held in output, before conntrack, so that the router's resolver
//     and its clients get the same guarantee; re-injected ones carry
//     DNSHold.Mark and are let through.
//
// TCP answers are only copied. Every path looks dns_alive up, so that a
// dead daemon stops holding, and is bounded by DNSHoldRate.
func (b *builder) dnsHold() {
	h := b.s.DNSHold
	if h.Group == 0 {
		return
	}
	b.addSet(&set{name: setDNSAlive, key: nftables.TypeInetProto, typeText: "inet_proto", learned: true, capacity: dnsAliveCap, keep: true})
	var ifaces []string
	for _, u := range b.s.Uplinks {
		if !slices.Contains(ifaces, u.Interface) {
			ifaces = append(ifaces, u.Interface)
		}
	}
	slices.Sort(ifaces)
	sport := func(proto byte, word string) frag {
		return frag{text: fmt.Sprintf("%s sport %d", word, dnsPort), exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{proto}),
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			cmpReg(expr.CmpOpEq, []byte{0, dnsPort}),
		}}
	}
	alive := frag{text: "meta l4proto @" + setDNSAlive, exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, lookup(setDNSAlive)}}
	logTo := func(prefix string) frag {
		return frag{text: fmt.Sprintf("log prefix %q group %d snaplen %d", prefix, h.Group, dnsHoldSnap), exprs: []expr.Any{
			&expr.Log{Key: nfLogPrefix | nfLogGroup | nfLogSnaplen, Data: []byte(prefix), Group: h.Group, Snaplen: dnsHoldSnap}}}
	}
	limit := func() frag {
		return frag{text: fmt.Sprintf("limit rate %d/second burst %d packets", DNSHoldRate, DNSHoldRate), exprs: []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: DNSHoldRate, Unit: expr.LimitTimeSecond, Burst: DNSHoldRate}}}
	}
	udp, tcp := func() frag { return sport(unix.IPPROTO_UDP, "udp") }, func() frag { return sport(unix.IPPROTO_TCP, "tcp") }

	// One token bucket for the held answers, one for the copies, shared
	// by both hooks.
	b.addChain(chainDNSHeld, nil).rules = []*rule{newRule(limit(), logTo(dnslearn.PrefixHold), verdict(expr.VerdictDrop, ""))}
	b.addChain(chainDNSCopy, nil).rules = []*rule{newRule(limit(), logTo(dnslearn.PrefixCopy))}
	b.addChain(chainDNSIn, nil).rules = []*rule{
		newRule(frag{text: "ct status snat", exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: reg},
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(ctStatusSNAT), Xor: native32(0)},
			cmpReg(expr.CmpOpNeq, native32(0)),
		}}, verdict(expr.VerdictGoto, chainDNSHeld)),
		newRule(frag{text: "fib daddr type != local", exprs: []expr.Any{
			&expr.Fib{Register: reg, ResultADDRTYPE: true, FlagDADDR: true},
			cmpReg(expr.CmpOpNeq, native32(unix.RTN_LOCAL)),
		}}, verdict(expr.VerdictGoto, chainDNSHeld)),
		newRule(verdict(expr.VerdictGoto, chainDNSCopy)),
	}
	in := b.addChain(chainDNSHold, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, hookName: "prerouting",
		prio: nftables.ChainPriorityRef(*nftables.ChainPriorityMangle - 10), prioName: "mangle - 10"})
	in.rules = []*rule{
		newRule(udp(), b.ifnameIn(true, false, ifaces), alive, verdict(expr.VerdictGoto, chainDNSIn)),
		newRule(tcp(), b.ifnameIn(true, false, ifaces), alive, verdict(expr.VerdictGoto, chainDNSCopy)),
	}
	out := b.addChain(chainDNSHoldOut, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookOutput, hookName: "output",
		prio: nftables.ChainPriorityRef(priorityRawNo), prioName: "raw"})
	reinjected := maskedMark("meta mark", metaMarkLoad(), b.s.Mask)
	reinjected.text += " != " + hexMark(h.Mark)
	reinjected.exprs = append(reinjected.exprs, cmpReg(expr.CmpOpNeq, native32(h.Mark)))
	out.rules = []*rule{
		newRule(udp(), b.ifnameIn(false, true, ifaces), reinjected, alive, verdict(expr.VerdictGoto, chainDNSHeld)),
		newRule(tcp(), b.ifnameIn(false, true, ifaces), alive, verdict(expr.VerdictGoto, chainDNSCopy)),
	}
}

// ifnameIn is `iifname "x"` (oifname with in false; != with not), or
// for several a lookup in the named set dns_ifaces (nft 1.0.6 lists the
// keys of an anonymous set of ifnames, which are in host order, as empty
// strings).
func (b *builder) ifnameIn(in, not bool, names []string) frag {
	t, load := ifnameMeta(in)
	op, word := expr.CmpOpEq, ""
	if not {
		op, word = expr.CmpOpNeq, "!= "
	}
	if len(names) == 1 {
		return frag{text: fmt.Sprintf("%s %s%q", t, word, names[0]), exprs: []expr.Any{load, cmpReg(op, ifnameKey(names[0]))}}
	}
	if !slices.ContainsFunc(b.t.sets, func(s *set) bool { return s.name == setDNSIfaces }) {
		s := &set{name: setDNSIfaces, key: typeIfname, typeText: "ifname", native: true}
		for _, n := range names {
			s.elems = append(s.elems, element{key: ifnameKey(n), text: fmt.Sprintf("%q", n)})
		}
		s.sortElems()
		b.addSet(s)
	}
	l := lookup(setDNSIfaces)
	l.Invert = not
	return frag{text: t + " " + word + "@" + setDNSIfaces, exprs: []expr.Any{load, l}}
}

// LearnedEntry is one address a learned set holds: the name whose
// answer taught it, and how long it still steers new connections.
type LearnedEntry struct {
	Addr netip.Addr
	Name string
	Left time.Duration
}

// LearnedEntries reads what the kernel's learned sets hold, by set name;
// a set the table does not have is left out (dumpSets).
func (m *Manager) LearnedEntries(sets []DomainSet) (map[string][]LearnedEntry, error) {
	names := make([]string, len(sets))
	for i, s := range sets {
		names[i] = s.Name
	}
	elems, err := m.dumpSets(names)
	if err != nil {
		return nil, err
	}
	out := map[string][]LearnedEntry{}
	for name, es := range elems {
		for _, e := range es {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out[name] = append(out[name], LearnedEntry{Addr: a, Name: e.Comment, Left: e.Expires})
			}
		}
	}
	return out, nil
}

// Learned is one address to add to a learned set.
type Learned struct {
	Set     string
	Addr    netip.Addr
	Name    string        // the DNS name whose answer gave it (the element's comment)
	Timeout time.Duration // from now
}

// AddLearned adds the addresses in one batch. An address the set holds
// already gets the new timeout (the kernel updates an element's expiry
// when it is added again). A set that is not there (a configuration
// without it applied meanwhile) fails the batch: the caller logs it.
//
// It goes out on the Manager's lasting connection, under the lock Apply
// holds from its dump of the sets to its commit: only the owning socket
// may change an owned table, and an address added between Apply's dump
// and its commit would be in neither table.
func (m *Manager) AddLearned(ls []Learned) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	t := &nftables.Table{Name: m.table, Family: nftables.TableFamilyINet}
	by := map[string][]nftables.SetElement{}
	var order []string
	for _, e := range ls {
		if _, ok := by[e.Set]; !ok {
			order = append(order, e.Set)
		}
		// The kernel keeps a comment of at most 128 bytes (NFT_USERDATA_MAXLEN is 256; nft caps comments at 128).
		by[e.Set] = append(by[e.Set], nftables.SetElement{Key: e.Addr.AsSlice(), Timeout: e.Timeout, Comment: truncate(e.Name, 128)})
	}
	for _, name := range order {
		key := nftables.TypeIPAddr
		if len(by[name][0].Key) == 16 {
			key = nftables.TypeIP6Addr
		}
		s := &nftables.Set{Table: t, Name: name, KeyType: key, HasTimeout: true}
		if err := m.conn.SetAddElements(s, by[name]); err != nil {
			_ = m.conn.Flush()
			return fmt.Errorf("adding learned addresses to set %s: %w", name, err)
		}
	}
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("adding learned addresses to sets %s: %w", strings.Join(order, ", "), err)
	}
	return nil
}

// KeepDNSAlive (re)adds udp and tcp to dns_alive for DNSAliveTimeout, or
// with alive false deletes them, so that the hold rules stop at once (a
// clean stop, or a learner that died).
func (m *Manager) KeepDNSAlive(alive bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	t := &nftables.Table{Name: m.table, Family: nftables.TableFamilyINet}
	s := &nftables.Set{Table: t, Name: setDNSAlive, KeyType: nftables.TypeInetProto, HasTimeout: true}
	elems := []nftables.SetElement{{Key: []byte{unix.IPPROTO_UDP}, Timeout: DNSAliveTimeout}, {Key: []byte{unix.IPPROTO_TCP}, Timeout: DNSAliveTimeout}}
	var err error
	if alive {
		err = m.conn.SetAddElements(s, elems)
	} else {
		err = m.conn.SetDeleteElements(s, elems)
	}
	if err == nil {
		err = m.conn.Flush()
	} else {
		_ = m.conn.Flush()
	}
	if err != nil {
		return fmt.Errorf("refreshing set %s: %w", setDNSAlive, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
