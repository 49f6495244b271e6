package rules

import (
	"errors"
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
	setDNSAlive  = "dns_alive"
	setDNSIfaces = "dns_ifaces"
	chainDNSHold = "dns_hold"
	dnsHoldSnap  = 65535
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

// learnedSet records a policy's learned set, made by fromPolicySet.
func (b *builder) learnedSet(name string, pol desired.Policy, f inet.Family) {
	if slices.ContainsFunc(b.t.domains, func(d DomainSet) bool { return d.Name == name }) {
		return
	}
	b.t.domains = append(b.t.domains, DomainSet{Name: name, Policy: pol.Name, Family: f, Domains: pol.Match.Domains})
}

// dnsHold holds the DNS answers that arrive from the uplinks for the
// daemon's learner, before conntrack sees them (see pkg/dnslearn: held
// there, the re-injected answer is the reply conntrack expects). UDP
// answers are dropped here and re-injected by the learner once their
// addresses are in the sets; TCP answers are only copied. Both rules
// look dns_alive up last, so that a packet that is no DNS answer from an
// uplink costs two comparisons.
func (b *builder) dnsHold() {
	g := b.s.DNSHold.Group
	if g == 0 {
		return
	}
	b.addSet(&set{name: setDNSAlive, key: nftables.TypeInetProto, typeText: "inet_proto", learned: true, capacity: dnsAliveCap, keep: true})
	ch := b.addChain(chainDNSHold, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, hookName: "prerouting",
		prio: nftables.ChainPriorityRef(priorityRawNo), prioName: "raw"})
	var ifaces []string
	for _, u := range b.s.Uplinks {
		if !slices.Contains(ifaces, u.Interface) {
			ifaces = append(ifaces, u.Interface)
		}
	}
	slices.Sort(ifaces)
	for _, p := range []struct {
		proto  byte
		word   string
		prefix string
		drop   bool
	}{{unix.IPPROTO_UDP, "udp", dnslearn.PrefixHold, true}, {unix.IPPROTO_TCP, "tcp", dnslearn.PrefixCopy, false}} {
		fs := []frag{
			{text: fmt.Sprintf("%s sport %d", p.word, dnsPort), exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{p.proto}),
				&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				cmpReg(expr.CmpOpEq, []byte{0, dnsPort}),
			}},
			b.iifnameIn(ifaces),
			{text: "meta l4proto @" + setDNSAlive, exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, lookup(setDNSAlive)}},
			{text: fmt.Sprintf("limit rate %d/second burst %d packets", DNSHoldRate, DNSHoldRate), exprs: []expr.Any{
				&expr.Limit{Type: expr.LimitTypePkts, Rate: DNSHoldRate, Unit: expr.LimitTimeSecond, Burst: DNSHoldRate}}},
			{text: fmt.Sprintf("log prefix %q group %d snaplen %d", p.prefix, g, dnsHoldSnap), exprs: []expr.Any{
				&expr.Log{Key: nfLogPrefix | nfLogGroup | nfLogSnaplen, Data: []byte(p.prefix), Group: g, Snaplen: dnsHoldSnap}}},
		}
		if p.drop {
			fs = append(fs, verdict(expr.VerdictDrop, ""))
		}
		ch.rules = append(ch.rules, newRule(fs...))
	}
}

// iifnameIn is `iifname "x"`, or for several a lookup in the named set
// dns_ifaces (nft 1.0.6 lists the keys of an anonymous set of ifnames,
// which are in host order, as empty strings).
func (b *builder) iifnameIn(names []string) frag {
	t, load := ifnameMeta(true)
	if len(names) == 1 {
		return frag{text: fmt.Sprintf("%s %q", t, names[0]), exprs: []expr.Any{load, cmpReg(expr.CmpOpEq, ifnameKey(names[0]))}}
	}
	if !slices.ContainsFunc(b.t.sets, func(s *set) bool { return s.name == setDNSIfaces }) {
		s := &set{name: setDNSIfaces, key: typeIfname, typeText: "ifname", native: true}
		for _, n := range names {
			s.elems = append(s.elems, element{key: ifnameKey(n), text: fmt.Sprintf("%q", n)})
		}
		s.sortElems()
		b.addSet(s)
	}
	return frag{text: t + " @" + setDNSIfaces, exprs: []expr.Any{load, lookup(setDNSIfaces)}}
}

// LearnedEntry is one address a learned set holds: the name whose
// answer taught it, and how long it still steers new connections.
type LearnedEntry struct {
	Addr netip.Addr
	Name string
	Left time.Duration
}

// LearnedEntries reads what the kernel's learned sets hold, by set name;
// a set the table does not have is left out. One dump per set, on a
// connection of its own (as StickyEntries): the caller paces the calls.
func (m *Manager) LearnedEntries(sets []DomainSet) (map[string][]LearnedEntry, error) {
	m.mu.Lock()
	if err := m.check(); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	name, nsFD, hasNS := m.table, m.nsFD, m.hasNS
	m.mu.Unlock()
	c, err := (&Manager{nsFD: nsFD, hasNS: hasNS}).transient()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up nftables table inet %s: %w", name, err)
	}
	out := map[string][]LearnedEntry{}
	for _, s := range sets {
		ns, err := c.GetSetByName(t, s.Name)
		if err != nil {
			continue // not (or no longer) there
		}
		elems, err := c.GetSetElements(ns)
		if err != nil {
			return nil, fmt.Errorf("reading learned set %s: %w", s.Name, err)
		}
		for _, e := range elems {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				continue
			}
			out[s.Name] = append(out[s.Name], LearnedEntry{Addr: a, Name: e.Comment, Left: e.Expires})
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
		if by[name][0].Key != nil && len(by[name][0].Key) == 16 {
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
