package rules

import (
	"bytes"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// table is the desired.NFT compiled once into what both Render and Apply need:
// every set with its elements and every chain with its rules, each rule
// holding its nft text and its expressions side by side. Building both
// from one model is what keeps `wanpin plan` and the kernel in agreement.
type table struct {
	name   string
	sets   []*set // named sets and maps, in creation (= listing) order
	chains []*chain
	sticky []StickySet
	// domains: the learned sets of domain policies.
	domains []DomainSet
}

var (
	typeMark    = nftables.TypeMark
	typeIfname  = nftables.TypeIFName
	typeIPv4    = nftables.TypeIPAddr
	typeIPv6    = nftables.TypeIP6Addr
	typeFibAddr = nftables.TypeFIBAddr
	// typeMarkIfname: the guard's key, a connection's mark and the
	// interface a packet leaves by.
	typeMarkIfname = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIFName)
)

type set struct {
	name      string
	anonymous bool
	key       nftables.SetDatatype
	typeText  string // "ipv4_addr", "mark : verdict"
	isMap     bool   // verdict map
	interval  bool
	// native: the key is in host byte order (marks, uids, gids, ifnames,
	// cgroup ids). Without the byte order hint nft lists such keys as
	// garbage; the kernel matches them either way.
	native bool
	elems  []element
	// dynamic: the datapath adds elements (flags dynamic,timeout), each
	// expiring timeout after its last update. keep: Apply carries the
	// elements the kernel holds over into the new table, with the time
	// they have left.
	dynamic, keep bool
	timeout       time.Duration
	// learned: the daemon adds elements, each with a timeout of its own
	// (flags timeout, no default); capacity is its size (0: LearnedSize).
	learned  bool
	capacity uint32
}

type element struct {
	key []byte
	// end is the exclusive end of an interval element (last+1); nil for an
	// interval that runs to the top of the key space.
	end     []byte
	interv  bool
	verdict *expr.Verdict
	text    string
}

type chain struct {
	name  string
	hook  *baseHook
	rules []*rule
}

type baseHook struct {
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	hookName string
	prio     *nftables.ChainPriority
	prioName string
}

type rule struct {
	text  string
	exprs []expr.Any
	anon  []*set // anonymous sets, in the order of their lookups
}

func newRule(fs ...frag) *rule {
	r := &rule{}
	var words []string
	for _, f := range fs {
		words = append(words, f.text)
		r.exprs = append(r.exprs, f.exprs...)
		if f.anon != nil {
			r.anon = append(r.anon, f.anon)
		}
	}
	r.text = strings.Join(words, " ")
	return r
}

// keyCmp orders elements as nft 1.0.6 lists them (see policy.KeyCmp).
func keyCmp(native bool) func(a, b element) int {
	c := policy.KeyCmp(native)
	return func(a, b element) int { return c(policy.Elem{Key: a.key}, policy.Elem{Key: b.key}) }
}

// size is what the kernel is told of a named set's size: its number of
// elements, unless it is an interval set or empty (0: not told). Told
// the size, the kernel picks a fixed-size hash for the set (for a 4-byte
// key the fast one, hashing one word) instead of the resizable
// rhashtable it must take for a set of unknown size; the table is
// replaced whole on every change, so a set never grows. Measured
// (perf, 64-byte forwarding): nft_rhash_lookup and its jhash were some
// 1.5% of all the CPU time for the restore and guard lookups.
func (s *set) size() uint32 {
	if s.dynamic {
		return StickySize
	}
	if s.learned && s.capacity > 0 {
		return s.capacity
	}
	if s.learned {
		return LearnedSize
	}
	if s.anonymous || s.interval {
		return 0
	}
	return uint32(len(s.elems))
}

func (s *set) sortElems() { slices.SortStableFunc(s.elems, keyCmp(s.native)) }

// inlineText is the `{ a, b }` form nft prints for an anonymous set.
func (s *set) inlineText() string {
	t := make([]string, len(s.elems))
	for i, e := range s.elems {
		t[i] = e.text
	}
	return "{ " + strings.Join(t, ", ") + " }"
}

func markElem(m uint32) element { return element{key: native32(m), text: hexMark(m)} }

// markIfnameElem is a `mark . ifname` key: the fields are concatenated,
// each padded to 32 bits (the ifname's 16 bytes are already).
func markIfnameElem(m uint32, n string) element {
	return element{key: append(native32(m), ifnameKey(n)...), text: fmt.Sprintf("%s . %q", hexMark(m), n)}
}
func ifnameElem(n string) element { return element{key: ifnameKey(n), text: fmt.Sprintf("%q", n)} }
func vmapElem(e element, v *expr.Verdict) element {
	e.verdict = v
	e.text += " : " + verdictText(v)
	return e
}

// Chain names, fixed by layout.md.
const (
	chainPrerouting   = "prerouting"
	chainOutput       = "output"
	chainPostrouting  = "postrouting"
	chainNAT          = "nat"
	chainBalDefault   = "bal_default_chain"
	mapRestore        = "restore"
	mapInbound        = "inbound"
	mapOutbound       = "outbound"
	mapGuard          = "guard"
	chainEvict        = "evict"
	chainEvictForward = "evict_forward"
	chainRejectMark   = "reject_mark"
	chainRejectFwd    = "reject_forward"
	chainRejectOut    = "reject_output"
	setUplinkIfaces   = "uplink_ifaces"
	// defaultBalancer names the default balancing in the names of its
	// sticky sets and chains (st4_default_m1...).
	defaultBalancer = "default"
	mapSource6      = "src6"
	chainNATIn      = "nat_in"
)

func markChain(u desired.Uplink) string { return "mark_" + u.Name }

func pinChain(u desired.Uplink) string   { return "pin_" + u.Name }
func saveChain(u desired.Uplink) string  { return "save_" + u.Name }
func leaveChain(u desired.Uplink) string { return "leave_" + u.Name }
func polChain(p desired.Policy) string   { return "pol_" + p.Name }

// gcd reduction: weights 2:4 and 1:2 balance the same, with fewer elements.
func reducedWeights(bs []desired.Bucket) ([]int, int) {
	g := 0
	for _, b := range bs {
		g = gcd(g, b.Weight)
	}
	if g <= 0 {
		return nil, 0
	}
	w := make([]int, len(bs))
	sum := 0
	for i, b := range bs {
		w[i] = b.Weight / g
		sum += w[i]
	}
	return w, sum
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// build compiles s. It does not validate: Render must cope with anything.
func build(s desired.NFT) *table {
	b := &builder{s: s, t: &table{name: s.Table}, byMark: map[uint32]desired.Uplink{}, progMaps: map[*policy.Map]bool{}}
	for _, u := range s.Uplinks {
		b.byMark[u.Mark] = u
	}
	b.build()
	return b.t
}

type builder struct {
	s      desired.NFT
	t      *table
	byMark map[uint32]desired.Uplink
	// termChains: the chain holding each terminal a folded policy needs
	// one for, by the terminal's text.
	termChains map[string]string
	// progMaps: the folded maps made so far (the hooks share some).
	progMaps map[*policy.Map]bool
	// stickyChains: per sticky balancer, the chain of each candidate's
	// mark (sticky.go).
	stickyChains map[string]map[uint32]string
	// rejects: some choice rejects by RejectMark (rejectTerminal).
	rejects bool
}

func (b *builder) addSet(s *set) *set {
	b.t.sets = append(b.t.sets, s)
	return s
}

func (b *builder) addChain(name string, h *baseHook) *chain {
	c := &chain{name: name, hook: h}
	b.t.chains = append(b.t.chains, c)
	return c
}

// Priorities just after the usual ones of other programs' chains: at
// the same priority the kernel runs base chains in an order of its own,
// and wanpin's must come last. In prerouting (and output, for the
// router's own connections), wg-quick's premangle
// (`meta mark set ct mark`) and iptables-nft's mangle PREROUTING (a
// CONNMARK --restore-mark) otherwise wiped a new connection's uplink
// choice: a LAN UDP flow policy-routed to uplink 2 went into wg0 instead
// (TestNeighbourWgQuick). In postrouting's NAT, Docker's and
// kube-proxy's MASQUERADE and an admin's SNAT bind first (their counters
// count); wanpin masquerades what none of them translated.
var (
	priorityAfterMangle = nftables.ChainPriorityRef(*nftables.ChainPriorityMangle + 1)
	priorityAfterSrcNAT = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 1)
)

func (b *builder) build() {
	s := b.s
	pre := b.addChain(chainPrerouting, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, hookName: "prerouting",
		prio: priorityAfterMangle, prioName: "mangle + 1"})
	out := b.addChain(chainOutput, &baseHook{typ: nftables.ChainTypeRoute,
		hook: nftables.ChainHookOutput, hookName: "output",
		prio: priorityAfterMangle, prioName: "mangle + 1"})
	post := b.addChain(chainPostrouting, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPostrouting, hookName: "postrouting",
		prio: nftables.ChainPriorityMangle, prioName: "mangle"})
	nat := b.addChain(chainNAT, &baseHook{typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookPostrouting, hookName: "postrouting",
		prio: priorityAfterSrcNAT, prioName: "srcnat + 1"})

	restore := b.addSet(&set{name: mapRestore, key: typeMark, typeText: "mark : verdict", isMap: true, native: true})
	inbound := b.addSet(&set{name: mapInbound, key: typeIfname, typeText: "ifname : verdict", isMap: true, native: true})
	guard := b.addSet(&set{name: mapGuard, key: typeMarkIfname, typeText: "mark . ifname : verdict", isMap: true, native: true})
	for _, u := range s.Uplinks {
		b.addChain(markChain(u), nil).rules = []*rule{newRule(setMark(false, s.Mask, u.Mark))}
		b.addChain(pinChain(u), nil).rules = []*rule{
			newRule(setMark(false, s.Mask, u.Mark)),
			newRule(setMark(true, s.Mask, u.Mark)),
		}
		// A packet leaving this uplink's interface whose connection no
		// uplink holds yet: another program's alone (see foreign), else
		// the connection is pinned to where it really leaves, whatever
		// uplink its own mark named. The suppress rule (`lookup main
		// suppress_prefixlength 0`) comes before the mark rules, so the
		// kernel sends a marked packet whose destination has a connected
		// or specific route in the main table out of that route's
		// interface: for an uplink's own link (the ISP's router, a modem,
		// an on-link resolver) another uplink's interface than the mark
		// named. Dropping it there lost every connection the balancer
		// gave another uplink; pinned here, its first packet is
		// translated here too (nat runs after this chain), so the ISP
		// sees its own customer. Health probes are bound to their
		// uplink's interface and never get here by another.
		leave := b.addChain(leaveChain(u), nil)
		if s.Mask != ^uint32(0) {
			leave.rules = append(leave.rules, newRule(b.foreign(), maskedMark("meta mark", metaMarkLoad(), s.Mask), eqZero(s.Mask), verdict(expr.VerdictReturn, "")))
		}
		leave.rules = append(leave.rules, newRule(setMark(true, s.Mask, u.Mark)))
		// The guard: a packet of a connection pinned to another uplink
		// never leaves here. If it did (a rule of ours deleted by hand, a
		// race with another program), the kernel would kill the
		// connection's masquerade entry for the changed interface; dropped
		// here, before NAT, the packet is merely lost and the connection
		// lives on until the rule is back. One lookup whatever the number
		// of uplinks: a guard chain per mark listing every other uplink's
		// interface cost 16 uplinks 16% of the small-packet rate (issue 15).
		// Neither the guard nor inbound names an interface with no way to
		// a gateway (desired.Uplink.NoGateway): a LAN interface configured
		// as an uplink by mistake would pin the whole LAN to it and drop
		// the replies of every connection pinned elsewhere.
		if !u.NoGateway {
			for _, o := range s.Uplinks {
				if o.Mark != u.Mark {
					guard.elems = append(guard.elems, vmapElem(markIfnameElem(o.Mark, u.Interface), &expr.Verdict{Kind: expr.VerdictDrop}))
				}
			}
			guard.elems = append(guard.elems, vmapElem(markIfnameElem(0, u.Interface),
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: leaveChain(u)}))
			inbound.elems = append(inbound.elems, vmapElem(ifnameElem(u.Interface),
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: pinChain(u)}))
		}

		// Pinned connections keep their uplink's mark even while it is
		// down: its table then holds only `unreachable default` (link
		// down), so nothing leaks out of another uplink with the wrong
		// source; or still its default route (health probes failing),
		// which the probes themselves need, replies included, to notice
		// the ISP coming back. The daemon flushes the connections of a
		// down uplink, so their next packet is balanced afresh.
		restore.elems = append(restore.elems, vmapElem(markElem(u.Mark),
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: markChain(u)}))
	}
	if s.Evict != 0 {
		b.evict(restore, guard)
	}
	for _, st := range []*set{restore, inbound, guard} {
		st.sortElems()
	}

	balDefault := b.addChain(chainBalDefault, nil)
	if r := b.sourceRule(); r != nil {
		balDefault.rules = append(balDefault.rules, r)
	}
	balDefault.rules = append(balDefault.rules, b.balancerRules(s.Default, defaultBalancer, true)...)

	restoreRule := b.restoreRule()
	returnRule := func(fs ...frag) *rule { return newRule(append(fs, verdict(expr.VerdictReturn, ""))...) }

	pre.rules = append(pre.rules,
		restoreRule,
		returnRule(ctStateNotNew()),
		newRule(func() frag { t, l := ifnameMeta(true); return frag{text: t, exprs: []expr.Any{l}} }(), vmapFrag(mapInbound)),
		returnRule(fibDaddrLocal()),
		returnRule(pkttypeNotHost()),
		returnRule(linkLocal6()),
		returnRule(multicast6()),
	)
	if s.Mask != ^uint32(0) { // a mask of every bit leaves none to others
		out.rules = append(out.rules, returnRule(b.foreign()))
	}
	out.rules = append(out.rules,
		b.restoreRule(),
		returnRule(maskedMark("meta mark", metaMarkLoad(), s.Mask), frag{
			text: "!= " + hexMark(0), exprs: []expr.Any{cmpReg(expr.CmpOpNeq, native32(0))}}),
		returnRule(ctStateNotNew()),
		returnRule(fibDaddrNotUnicast()),
		returnRule(linkLocal6()),
		returnRule(multicast6()),
	)
	if s.MPTCP {
		// An MPTCP subflow's SYN (MP_JOIN) leaves by its source
		// address: its endpoint binds it to the uplink, and a policy's
		// mark would route it elsewhere (where the guard drops it).
		out.rules = append(out.rules, returnRule(mptcpJoin()))
	}

	// The one semantics of match keys: policy.Compile gives each policy's
	// conditions and policy.Build orders (and folds) them per hook, and
	// core.Explain evaluates the same programs.
	comps := make([]policy.Compiled, len(s.Policies))
	for i, p := range s.Policies {
		comps[i] = policy.Compile(p.Name, p.Match)
	}
	progs := policy.Build(comps)
	// Only the sets the rules left after folding still look up.
	used := map[*policy.Set]bool{}
	for _, prog := range progs {
		for _, it := range prog {
			if it.Map == nil {
				for _, c := range it.Rule.Conds {
					used[c.Set] = true
				}
			}
		}
	}
	if used[policy.TCPOrUDP] {
		b.addSet(fromPolicySet(policy.TCPOrUDP))
	}
	for i := range s.Policies {
		for _, ps := range comps[i].Sets {
			if used[ps] {
				b.addSet(fromPolicySet(ps))
				if ps.Learned {
					f := inet.IPv4
					if ps.Type == policy.TypeIPv6 {
						f = inet.IPv6
					}
					b.learnedSet(ps.Name, s.Policies[i], f)
				}
			}
		}
	}
	// A policy's terminal (and the maps and chains it needs) is made when
	// a rule or a map element first ends in it: a policy that matches
	// nothing (a service not running) leaves nothing in the table.
	made := make([]bool, len(s.Policies))
	terms := make([]terminal, len(s.Policies))
	end := func(i int) terminal {
		if !made[i] {
			made[i], terms[i] = true, b.policyEnd(s.Policies[i])
		}
		return terms[i]
	}
	for h, prog := range progs {
		ch := pre
		if h == 1 {
			ch = out
		}
		for _, it := range prog {
			if it.Map == nil {
				ch.rules = append(ch.rules, policyRule(it.Rule, end(it.Policy).frag))
				continue
			}
			ch.rules = append(ch.rules, b.programMap(it.Map, s.Policies, end))
		}
	}
	pre.rules = append(pre.rules, newRule(verdict(expr.VerdictGoto, chainBalDefault)))

	// postrouting: one lookup on the connection's mark and the interface
	// the packet leaves by. The mask on the ct mark: a connection pinned
	// by someone else's bits outside M still counts as unpinned for
	// wanpin. The guard looks at the connection's mark, which lives in the
	// conntrack entry and cannot miss: a packet of a pinned connection
	// that reaches postrouting without its meta mark (seen under a storm
	// of table replacements: the restore missed, the main table sent a
	// client's ACK out of the other uplink, and the kernel killed the
	// masquerade entry of a healthy connection) is dropped; TCP resends
	// it a moment later through the right uplink. An unpinned
	// connection's packets go on to the uplink's leave chain; packets
	// that leave no uplink (to the LAN) find nothing and pass.
	post.rules = append(post.rules, newRule(
		maskedMark("ct mark", ctMarkLoad(), s.Mask),
		func() frag {
			return frag{text: ". oifname", exprs: []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: regConcat2}}}
		}(),
		vmapFrag(mapGuard),
	))

	nat.rules = b.natRules()
	if in := b.natInRules(); len(in) > 0 {
		c := b.addChain(chainNATIn, &baseHook{typ: nftables.ChainTypeNAT,
			hook: nftables.ChainHookPrerouting, hookName: "prerouting",
			prio: nftables.ChainPriorityNATDest, prioName: "dstnat"})
		c.rules = in
	}
	b.dnsHold()
	b.rejectChains()
}

// rejectTerminal is a rejecting choice's verdict. A reject in prerouting
// or output, before routing, refused what no uplink would ever carry:
// with a policy's uplinks down, its hosts lost the printer on the second
// LAN and the router's user its NAS (audit). With a RejectMark the
// connection's first packet gets that mark instead (reject_mark), the
// routing takes its course, the main table's specific routes first (the
// suppress rule), and reject_forward and reject_output refuse it only
// where it leaves by an uplink. The mark matches no ip rule, so it
// routes as an unmarked packet would.
func (b *builder) rejectTerminal(only4 bool) []frag {
	if b.s.RejectMark == 0 {
		if only4 {
			return []frag{rejectIPv4()}
		}
		return []frag{rejectDefault()}
	}
	b.rejects = true
	v := verdict(expr.VerdictGoto, chainRejectMark)
	if only4 {
		return []frag{nfprotoFrag(inet.IPv4), v}
	}
	return []frag{v}
}

// rejectChains: the chain that marks a rejected connection and the two
// that refuse it where it would leave by an uplink, forwarded or the
// router's own (after the output chain's re-route: filter priority),
// only while some choice rejects.
func (b *builder) rejectChains() {
	if !b.rejects {
		return
	}
	b.addChain(chainRejectMark, nil).rules = []*rule{newRule(setMark(false, b.s.Mask, b.s.RejectMark))}
	ifaces := b.addSet(&set{name: setUplinkIfaces, key: typeIfname, typeText: "ifname", native: true})
	for _, u := range b.s.Uplinks {
		if !u.NoGateway {
			ifaces.elems = append(ifaces.elems, ifnameElem(u.Interface))
		}
	}
	ifaces.sortElems()
	ifaces.elems = slices.CompactFunc(ifaces.elems, func(x, y element) bool { return bytes.Equal(x.key, y.key) })
	mark := maskedMark("meta mark", metaMarkLoad(), b.s.Mask)
	if b.s.Mask != ^uint32(0) {
		mark.text += " == " + hexMark(b.s.RejectMark)
	} else {
		mark.text += " " + hexMark(b.s.RejectMark)
	}
	mark.exprs = append(mark.exprs, cmpReg(expr.CmpOpEq, native32(b.s.RejectMark)))
	oif := frag{text: "oifname @" + setUplinkIfaces, exprs: []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}, lookup(setUplinkIfaces)}}
	for _, h := range []struct {
		name     string
		hook     *nftables.ChainHook
		hookName string
	}{{chainRejectFwd, nftables.ChainHookForward, "forward"}, {chainRejectOut, nftables.ChainHookOutput, "output"}} {
		b.addChain(h.name, &baseHook{typ: nftables.ChainTypeFilter, hook: h.hook, hookName: h.hookName,
			prio: nftables.ChainPriorityFilter, prioName: "filter"}).rules = []*rule{newRule(mark, oif, rejectDefault())}
	}
}

// evict adds what resets the TCP connections failback moved off their
// uplink (ct mark Evict, set by the daemon on each entry): their next
// packet from the far end, which carries the sequence number the LAN
// host expects, reaches it as a reset (RST|ACK: the kernel's payload
// write fixes the checksum), and their next packet from the LAN host is
// answered with a reset in forward (reject is not allowed in
// prerouting). Either way the application sees its connection reset at
// once and reconnects, over the uplink that is back. The router's own
// packets of such a connection are dropped in postrouting: the routing
// would send them out of another uplink with the old one's address.
func (b *builder) evict(restore, guard *set) {
	e := b.s.Evict
	b.addChain(chainEvict, nil).rules = []*rule{newRule(
		frag{text: "ct direction reply", exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg}, cmpReg(expr.CmpOpEq, []byte{1})}},
		frag{text: "tcp flags set rst | ack", exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{unix.IPPROTO_TCP}),
			&expr.Immediate{Register: reg, Data: []byte{0x14}},
			&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: reg, Base: expr.PayloadBaseTransportHeader,
				Offset: 13, Len: 1, CsumType: expr.CsumTypeInet, CsumOffset: 16, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR}}},
	)}
	restore.elems = append(restore.elems, vmapElem(markElem(e), &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainEvict}))
	for _, u := range b.s.Uplinks {
		if !u.NoGateway {
			guard.elems = append(guard.elems, vmapElem(markIfnameElem(e, u.Interface), &expr.Verdict{Kind: expr.VerdictDrop}))
		}
	}
	fwd := b.addChain(chainEvictForward, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookForward, hookName: "forward",
		prio: nftables.ChainPriorityFilter, prioName: "filter"})
	mark := maskedMark("ct mark", ctMarkLoad(), b.s.Mask)
	mark.text += " " + hexMark(e)
	if b.s.Mask != ^uint32(0) {
		mark.text = "ct mark & " + hexMark(b.s.Mask) + " == " + hexMark(e)
	}
	mark.exprs = append(mark.exprs, cmpReg(expr.CmpOpEq, native32(e)))
	fwd.rules = []*rule{newRule(mark,
		frag{text: "ct direction original", exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg}, cmpReg(expr.CmpOpEq, []byte{0})}},
		frag{text: "meta l4proto tcp", exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmpReg(expr.CmpOpEq, []byte{unix.IPPROTO_TCP})}},
		frag{text: "reject with tcp reset", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}},
	)}
}

// foreign: the packet carries another program's mark bits. The router's
// own packets that another program marked (tailscaled's bypass mark
// 0x80000, wg-quick's 51820 by SO_MARK) belong to that program's routing:
// its ip rules match the mark, often exactly (`not fwmark 51820`), so
// adding wanpin's bits would send its tunnel's packets into the tunnel.
// wanpin neither restores, balances nor pins them.
func (b *builder) foreign() frag {
	f := maskedMark("meta mark", metaMarkLoad(), ^b.s.Mask)
	f.text += " != " + hexMark(0)
	if n := bits.LeadingZeros32(b.s.Mask); ^b.s.Mask == ^uint32(0)<<(32-n) {
		// nft lists a comparison under a prefix mask as value/len
		// (M = 0x000000ff: `meta mark != 0x00000000/24`).
		f.text = fmt.Sprintf("meta mark != %s/%d", hexMark(0), n)
	}
	f.exprs = append(f.exprs, cmpReg(expr.CmpOpNeq, native32(0)))
	return f
}

// restoreRule gives a packet its connection's pin: the uplink's mark
// from the ct mark, through the restore map.
func (b *builder) restoreRule() *rule {
	return newRule(maskedMark("ct mark", ctMarkLoad(), b.s.Mask), vmapFrag(mapRestore))
}

// saveRule pins a new connection that no one pinned yet to the uplink it
// leaves by.
func (b *builder) saveRule() *rule {
	return newRule(
		ctStateNew(),
		maskedMark("ct mark", ctMarkLoad(), b.s.Mask),
		eqZero(b.s.Mask),
		func() frag { t, l := ifnameMeta(false); return frag{text: t, exprs: []expr.Any{l}} }(),
		vmapFrag(mapOutbound),
	)
}

// KeepTable names the companion table that keeps existing connections
// going while wanpin's own table is missing. Where that table is not
// owned (Debian 12's 6.1 has the owner flag but not persist, and an owned
// table without persist would vanish whenever the daemon stops; or
// --no-table-owner), a firewall reload's `nft flush ruleset` deletes it,
// and until drift repair puts it back (the reloading nft's exit holds the
// kernel's commit lock for an RCU grace period: 10 to 25 ms here) three
// things would go:
//   - the pins: with no restore, a pinned connection's packets carry no
//     mark and the main table routes them, often out of another uplink,
//     whose ISP drops the foreign source;
//   - NAT: a new connection in the gap gets a null binding and leaves
//     untranslated for as long as its conntrack entry lives;
//   - conntrack and the NAT hooks themselves: the kernel registers them
//     in a namespace only while some ruleset uses them (a nat chain, a ct
//     expression), and a firewall without ct rules does not, so a reply
//     to an uplink's address is no longer translated back and the router
//     answers it with a reset.
//
// The companion is owned (and persists where the kernel can), so a flush
// skips it, and it holds a copy of exactly those, one priority ahead of
// the main table's chains: the restore (prerouting, output), the save of
// a new connection's pin (postrouting: a connection started in the gap
// follows the main table and stays pinned where it went) and the nat
// chain. New connections in the gap are neither balanced nor policy
// routed; nothing else changes for them. Both tables are replaced in one
// transaction; the restore runs twice per packet while both are there
// (the same mark, set again), the price of surviving the flush.
func KeepTable(table string) string { return table + "_keep" }

// legacyKeeper is the companion of wanpin before KeepTable: an empty
// nat chain only. The first Apply deletes it.
func legacyKeeper(table string) string { return table + "_nat_hooks" }

// buildKeep compiles the companion table of s (see KeepTable).
func buildKeep(s desired.NFT) *table {
	b := &builder{s: s, t: &table{name: KeepTable(s.Table)}, byMark: map[uint32]desired.Uplink{}}
	for _, u := range s.Uplinks {
		b.byMark[u.Mark] = u
	}
	ahead := *nftables.ChainPriorityMangle - 1
	pre := b.addChain(chainPrerouting, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, hookName: "prerouting",
		prio: nftables.ChainPriorityRef(ahead), prioName: "mangle - 1"})
	// A route chain: a restored mark makes the kernel route the router's
	// own packet again, as in the main table's output chain.
	out := b.addChain(chainOutput, &baseHook{typ: nftables.ChainTypeRoute,
		hook: nftables.ChainHookOutput, hookName: "output",
		prio: nftables.ChainPriorityRef(ahead), prioName: "mangle - 1"})
	post := b.addChain(chainPostrouting, &baseHook{typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPostrouting, hookName: "postrouting",
		prio: nftables.ChainPriorityRef(ahead), prioName: "mangle - 1"})
	nat := b.addChain(chainNAT, &baseHook{typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookPostrouting, hookName: "postrouting",
		prio: priorityAfterSrcNAT, prioName: "srcnat + 1"})
	restore := b.addSet(&set{name: mapRestore, key: typeMark, typeText: "mark : verdict", isMap: true, native: true})
	outbound := b.addSet(&set{name: mapOutbound, key: typeIfname, typeText: "ifname : verdict", isMap: true, native: true})
	for _, u := range s.Uplinks {
		b.addChain(markChain(u), nil).rules = []*rule{newRule(setMark(false, s.Mask, u.Mark))}
		b.addChain(saveChain(u), nil).rules = []*rule{newRule(setMark(true, s.Mask, u.Mark))}
		restore.elems = append(restore.elems, vmapElem(markElem(u.Mark),
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: markChain(u)}))
		outbound.elems = append(outbound.elems, vmapElem(ifnameElem(u.Interface),
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: saveChain(u)}))
	}
	restore.sortElems()
	outbound.sortElems()
	// The ct expressions of these rules are what holds conntrack in the
	// namespace; the nat chain, even empty, holds the NAT hooks.
	pre.rules = []*rule{b.restoreRule()}
	out.rules = []*rule{b.restoreRule()}
	// A connection that starts in the gap follows the main table, and is
	// pinned to the uplink it really leaves by, as the main table's
	// postrouting would: it stays there when the table is back.
	post.rules = []*rule{b.saveRule()}
	nat.rules = b.natRules()
	return b.t
}

// eqZero compares with 0. nft spells out "==" only after a binary
// operation (the mask); a plain load compares implicitly.
func eqZero(mask uint32) frag {
	t := hexMark(0)
	if mask != ^uint32(0) {
		t = "== " + t
	}
	return frag{text: t, exprs: []expr.Any{cmpReg(expr.CmpOpEq, native32(0))}}
}

func vmapFrag(name string) frag {
	return frag{text: "vmap @" + name, exprs: []expr.Any{vmapLookup(name)}}
}

func linkLocal6() frag {
	return ip6DaddrMasked(netip.MustParseAddr("fe80::").As16(), 10, "fe80::/10")
}

func multicast6() frag {
	return ip6DaddrPrefix(netip.MustParseAddr("ff00::").As16(), 8, "ff00::/8")
}

// balancerRules fills a balancer chain: a weighted random choice through a
// numgen map, or reject, or a hand-over to the default balancer, or nothing
// (the chain was reached by goto, so an empty chain ends the base chain
// and the connection stays unmarked). When the families choose differently
// (an uplink up in one family only), the IPv4 choice comes first, each of
// its rules ending the chain for IPv4 packets, then the IPv6 one.
//
// A sticky balancer looks the connection's source up first, in one set per
// family and candidate (see sticky.go).
func (b *builder) balancerRules(bal desired.Balancer, base string, isDefault bool) []*rule {
	var sticky []*rule
	if bal.Sticky.On() {
		b.stickyBalancer(base, bal)
		for _, f := range inet.Families {
			sticky = append(sticky, b.stickyRules(base, bal.Sticky, bal.For(f), f)...)
		}
	}
	if bal.Same() {
		return append(sticky, b.choiceRules(bal.V4, base, isDefault, false)...)
	}
	rs := b.choiceRules(bal.V4, base, isDefault, true)
	if len(rs) == 0 {
		rs = append(rs, newRule(nfprotoFrag(inet.IPv4), verdict(expr.VerdictReturn, "")))
	}
	return append(append(sticky, rs...), b.choiceRules(bal.V6, base, isDefault, false)...)
}

// nfprotoFrag is `meta nfproto ipv4|ipv6`.
func nfprotoFrag(f inet.Family) frag {
	return frag{text: "meta nfproto " + f.Label(), exprs: nfprotoIs(f)}
}

// terminal is how a policy's rules end: the balancer's verdict, inline.
// v is that verdict alone when it is one (a goto, accept), which is what
// a folded map's element can hold.
type terminal struct {
	frag frag
	v    *expr.Verdict
}

// policyEnd is the policy's terminal. The balancer's verdict goes into
// the policy's own rules when it is one rule without a map of its own
// (a goto, reject): a chain per policy would double the objects an
// apply of many policies creates. A numgen choice (its map is anonymous,
// one per rule) or families that choose differently go into a chain the
// policy's rules goto, shared by every policy whose balancer reads the
// same.
func (b *builder) policyEnd(p desired.Policy) terminal {
	bal := b.balancerRules(p.Balancer, p.Name, false)
	var end frag
	switch {
	case len(bal) == 0:
		// Nothing to choose from: the connection stays unmarked, as
		// the end of an empty chain reached by goto would leave it.
		end = verdict(expr.VerdictAccept, "")
	case len(bal) == 1 && len(bal[0].anon) == 0:
		end = frag{text: bal[0].text, exprs: bal[0].exprs}
	default:
		end = frag{text: "goto " + b.sharedChain(p, bal), exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: b.sharedChain(p, bal)}}}
	}
	t := terminal{frag: end}
	if len(end.exprs) == 1 {
		t.v, _ = end.exprs[0].(*expr.Verdict)
	}
	return t
}

// programMap is the rule and the verdict map of a folded run of
// policies. An element's verdict is the policy's own when it is a plain
// verdict; otherwise (a numgen lookup, reject) a chain holds it, one per
// distinct terminal, named after the first policy that has it.
func (b *builder) programMap(m *policy.Map, pols []desired.Policy, end func(int) terminal) *rule {
	rule := func(name string) *rule {
		var ex []expr.Any
		if m.NFProto != 0 {
			ex = append(ex, nfprotoIs(m.NFProto)...)
		}
		ex = append(ex, loadExpr(m.Load), vmapLookup(name))
		return newRule(frag{text: m.Key + " vmap @" + name, exprs: ex})
	}
	// The hooks share a map where both fold a run alike: it is made once.
	if b.progMaps[m] {
		return rule(m.Name)
	}
	b.progMaps[m] = true
	st := b.addSet(&set{name: m.Name, key: setTypes[m.Type], typeText: m.Type.Name() + " : verdict",
		isMap: true, interval: m.Interval, native: m.Type.Native()})
	st.elems = make([]element, 0, len(m.Elems))
	for _, e := range m.Elems {
		t := end(e.Policy)
		v := t.v
		if v == nil {
			v = b.terminalChain(pols[e.Policy], t.frag)
		}
		st.elems = append(st.elems, vmapElem(element{key: e.Key, end: e.End, interv: m.Interval, text: e.Text}, v))
	}
	return rule(m.Name)
}

// terminalChain is `goto` a chain ending in the terminal end, shared by
// every policy whose terminal reads the same.
func (b *builder) terminalChain(p desired.Policy, end frag) *expr.Verdict {
	return &expr.Verdict{Kind: expr.VerdictGoto, Chain: b.sharedChain(p, []*rule{newRule(end)})}
}

// sharedChain is the chain holding rules, made for the first policy p
// that needs it (pol_<p>) and shared by every later one whose rules read
// the same: policies that balance alike (an uplink without IPv6 makes
// every policy's families choose differently) need one chain, not one
// each.
func (b *builder) sharedChain(p desired.Policy, rules []*rule) string {
	var key strings.Builder
	for _, r := range rules {
		key.WriteString(r.text + "\n")
	}
	if b.termChains == nil {
		b.termChains = map[string]string{}
	}
	name, ok := b.termChains[key.String()]
	if !ok {
		name = polChain(p)
		b.termChains[key.String()] = name
		b.addChain(name, nil).rules = rules
	}
	return name
}

// policyRule is one compiled rule of a policy, ending in the policy's
// verdict: a reject after a match of one family as nft makes it there
// (rejectIn), one destination port and one source port in one load
// (portsFrag).
func policyRule(r policy.Rule, end frag) *rule {
	var fs []frag
	var fam inet.Family
	for i := 0; i < len(r.Conds); i++ {
		c := r.Conds[i]
		if c.NFProto != 0 {
			fam = c.NFProto
		}
		if i+1 < len(r.Conds) && portPair(c, r.Conds[i+1]) {
			fs = append(fs, portsFrag(c, r.Conds[i+1]))
			i++
			continue
		}
		fs = append(fs, condFrag(c))
	}
	if fam != 0 && isRejectDefault(end) {
		end = rejectIn(fam)
	}
	return newRule(append(fs, end)...)
}

func (b *builder) choiceRules(c desired.Choice, base string, isDefault, only4 bool) []*rule {
	var head []frag
	if only4 {
		head = []frag{nfprotoFrag(inet.IPv4)}
	}
	weights, total := reducedWeights(c.Buckets)
	switch {
	case total == 1:
		// One candidate: no numgen and no map, straight to its mark.
		u := b.byMark[c.Buckets[slices.IndexFunc(weights, func(w int) bool { return w > 0 })].Mark]
		return []*rule{newRule(append(head, verdict(expr.VerdictGoto, b.target(base, u)))...)}
	case total > 0:
		// An anonymous map, listed inline. A named one would not load
		// again from its listing (`nft list ruleset >
		// /etc/nftables.conf`): nft 1.0.6 type-checks its key against
		// `numgen random mod N` (type integer) as it parses the text,
		// and refuses `type mark` ("datatype mismatch, map expects
		// packet mark") as it refuses `type integer` (a type without a
		// size); only `typeof numgen random mod N` would do, which the
		// set's userdata must carry and the library cannot send. An
		// inline map takes its type from the numgen expression. Its keys
		// are big-endian, with numgen's host-order number converted in
		// front of the lookup: the library marks every anonymous set's
		// keys big-endian, and nft lists them as the map says (host-order
		// keys would list 1 as 16777216); nft lists the conversion as
		// nothing, and what it loads back from the text (host-order keys,
		// no conversion) lists the same. Still one lookup, on a new
		// connection's first packet only; policies that balance alike
		// share the chain holding it (policyEnd) as they shared a map.
		m := &set{anonymous: true, key: nftables.TypeInteger, typeText: "integer : verdict", isMap: true}
		n := uint32(0)
		for i, bk := range c.Buckets {
			u := b.byMark[bk.Mark]
			for range weights[i] {
				m.elems = append(m.elems, vmapElem(element{key: binaryutil.BigEndian.PutUint32(n), text: fmt.Sprint(n)},
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: b.target(base, u)}))
				n++
			}
		}
		return []*rule{newRule(append(head, numgenVmap(uint32(total), m))...)}
	case c.Reject:
		return []*rule{newRule(b.rejectTerminal(only4)...)}
	case c.FallbackDefault && !isDefault:
		return []*rule{newRule(append(head, verdict(expr.VerdictGoto, chainBalDefault))...)}
	}
	return nil
}

// sourceRule is `ip6 saddr vmap @src6`: the source prefix chooses the
// uplink (nat6 none) before any balancing.
func (b *builder) sourceRule() *rule {
	if len(b.s.Source6) == 0 {
		return nil
	}
	m := b.addSet(&set{name: mapSource6, key: typeIPv6, typeText: "ipv6_addr : verdict", isMap: true, interval: true})
	for _, sp := range b.s.Source6 {
		// Validate made sure the prefixes do not overlap: one element each.
		for _, e := range policy.PrefixElems([]netip.Prefix{sp.Prefix}, inet.IPv6) {
			el := element{key: e.Key, end: e.End, interv: true, text: e.Text}
			m.elems = append(m.elems, vmapElem(el, &expr.Verdict{Kind: expr.VerdictGoto, Chain: markChain(b.byMark[sp.Mark])}))
		}
	}
	slices.SortFunc(m.elems, func(x, y element) int { return bytes.Compare(x.key, y.key) })
	name, load := addrPayload(inet.IPv6, saddr)
	return newRule(frag{text: name, exprs: append(nfprotoIs(inet.IPv6), load)}, vmapFrag(mapSource6))
}

// natRules, per uplink and family. IPv4: translate everything leaving a
// Masquerade uplink; on the others only the router's own traffic that a
// mark re-routed there and that still carries another uplink's address.
// IPv6 by the uplink's NAT6 mode: translate everything; or leave the
// uplink's own prefix untranslated and translate the rest (a host of
// another uplink's prefix failed over here, the router's own traffic);
// or map the LAN prefix onto the uplink's prefix and translate the rest.
//
// "Translate" is snat to the uplink's address, not masquerade, wherever
// the address is known: the kernel kills a masquerade entry whose packet
// leaves by another interface (nf_nat_oif_changed), and while wanpin's
// table is missing (a firewall reload's `flush ruleset` on a kernel
// without the owner flag) a pinned connection's packets are routed by the
// main table for a moment. With snat the entry survives: the stray packet
// is lost, TCP resends it once the table is back.
func (b *builder) natRules() []*rule {
	var rs []*rule
	for _, u := range b.s.Uplinks {
		nat6 := u.NAT6
		if nat6 == "" {
			nat6 = desired.NAT6Masquerade
		}
		out := oifnameIs(u.Interface)
		if u.Masquerade && nat6 == desired.NAT6Masquerade && !u.NAT.Get(inet.IPv4).IsValid() && !u.NAT.Get(inet.IPv6).IsValid() {
			// No address known yet: one masquerade for both families.
			rs = append(rs, newRule(out, masquerade()))
			continue
		}
		for _, f := range inet.Families {
			if r := b.ownAddrsKept(u, f); r != nil {
				rs = append(rs, r)
			}
		}
		if u.Masquerade {
			rs = append(rs, newRule(out, b.translate(u, inet.IPv4)))
		} else if r := b.foreignAddrMasq(u); r != nil {
			rs = append(rs, r)
		}
		switch nat6 {
		case desired.NAT6Masquerade:
			rs = append(rs, newRule(out, b.translate(u, inet.IPv6)))
		case desired.NAT6None:
			rs = append(rs, newRule(out, ip6PrefixCmp(saddr, expr.CmpOpNeq, u.Prefix6), b.translateMatched(u, inet.IPv6)))
		case desired.NAT6Prefix:
			rs = append(rs,
				newRule(out, ip6PrefixCmp(saddr, expr.CmpOpEq, b.s.LANPrefix6), prefixNAT(snat, u.Prefix6)),
				newRule(out, b.translate(u, inet.IPv6)))
		}
	}
	return rs
}

// translate is `snat ip|ip6 to <uplink's address>`, or `meta nfproto
// ipv4|ipv6 masquerade` while the address is unknown. A snat of one
// family does nothing to a packet of the other (nft_nat_inet), so it
// needs no nfproto match.
func (b *builder) translate(u desired.Uplink, f inet.Family) frag {
	a := u.NAT.Get(f)
	if !a.IsValid() {
		pf := nfprotoFrag(f)
		m := masquerade()
		return frag{text: pf.text + " " + m.text, exprs: append(pf.exprs, m.exprs...)}
	}
	return snatTo(f, a)
}

// translateMatched is translate after a match that already selects the
// family (`ip saddr ...`): the masquerade stand-in needs no nfproto.
func (b *builder) translateMatched(u desired.Uplink, f inet.Family) frag {
	if a := u.NAT.Get(f); a.IsValid() {
		return snatTo(f, a)
	}
	return masquerade()
}

// natInRules: on the way in, an uplink with NAT6Prefix maps its prefix
// back onto the LAN prefix, so a host's translated address is reachable
// (replies need no rule: conntrack reverses the outgoing mapping).
func (b *builder) natInRules() []*rule {
	var rs []*rule
	for _, u := range b.s.Uplinks {
		if u.NAT6 != desired.NAT6Prefix {
			continue
		}
		t, l := ifnameMeta(true)
		iif := frag{text: fmt.Sprintf("%s %q", t, u.Interface), exprs: []expr.Any{l, cmpReg(expr.CmpOpEq, ifnameKey(u.Interface))}}
		rs = append(rs, newRule(iif, ip6PrefixCmp(daddr, expr.CmpOpEq, u.Prefix6), prefixNAT(dnat, b.s.LANPrefix6)))
	}
	return rs
}

// foreignAddrMasq: on an uplink that does not masquerade IPv4, the router's
// own packets re-routed there with another uplink's address as source.
func (b *builder) foreignAddrMasq(u desired.Uplink) *rule {
	var v4 []netip.Addr
	for _, o := range b.s.Uplinks {
		if o.Name == u.Name {
			continue
		}
		for _, a := range o.Addrs {
			if a = a.Unmap(); a.Is4() {
				v4 = append(v4, a)
			}
		}
	}
	if len(v4) == 0 {
		return nil
	}
	return newRule(oifnameIs(u.Interface), saddrIn(inet.IPv4, v4), b.translateMatched(u, inet.IPv4))
}

// saddrIn is `ip|ip6 saddr <addr>` or `ip|ip6 saddr { <addrs> }`.
func saddrIn(fam inet.Family, addrs []netip.Addr) frag {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	name, load := addrPayload(fam, saddr)
	f := frag{exprs: append(nfprotoIs(fam), load)}
	if len(addrs) == 1 {
		f.text = name + " " + addrs[0].String()
		f.exprs = append(f.exprs, cmpReg(expr.CmpOpEq, addrs[0].AsSlice()))
		return f
	}
	st := &set{anonymous: true, key: typeIPv4, typeText: "ipv4_addr"}
	if fam == inet.IPv6 {
		st.key, st.typeText = typeIPv6, "ipv6_addr"
	}
	for _, a := range addrs {
		st.elems = append(st.elems, element{key: a.AsSlice(), text: a.String()})
	}
	f.text, f.anon = name+" "+st.inlineText(), st
	f.exprs = append(f.exprs, lookup(""))
	return f
}

// ownAddrsKept: the router's own packets that already carry one of the
// uplink's addresses other than the one it translates to (a second
// address, or the new one of a renumber while the old one is still
// there) leave untranslated. Each of those addresses is an MPTCP
// endpoint whose subflows must leave from it: translated to the first
// address, the peer knows the subflow by that one, and when a renumber
// takes it away the subflow is dead (e2e TestMPTCPEdgeRenumber). nil when
// the uplink has no such address in the family.
func (b *builder) ownAddrsKept(u desired.Uplink, fam inet.Family) *rule {
	nat := u.NAT.Get(fam)
	var other []netip.Addr
	for _, a := range u.Addrs {
		if a = a.Unmap(); a.Is4() == (fam == inet.IPv4) && a != nat {
			other = append(other, a)
		}
	}
	if !nat.IsValid() || len(other) == 0 {
		return nil
	}
	return newRule(oifnameIs(u.Interface), saddrIn(fam, other), verdict(expr.VerdictReturn, ""))
}
