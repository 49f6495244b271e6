package rules

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
)

// StickySize is the most sources (or source and destination pairs) one
// sticky set remembers per uplink and family. A full set refuses new
// entries (the kernel's dynset update then breaks out of its rule, and the
// next one still marks the connection): a LAN flooding spoofed sources
// costs at most this many elements, and past it only stickiness is lost.
const StickySize = 65535

// dynset operations (linux/netfilter/nf_tables.h, NFT_DYNSET_OP_*).
const dynsetOpUpdate = 1

// StickySet names one sticky set of a table: which balancer ("" for the
// default balancing, else the policy), which family and which uplink its
// members were given.
type StickySet struct {
	Name          string
	Policy        string
	Family        inet.Family
	Uplink        string
	Mark          uint32
	ByDestination bool
	Timeout       time.Duration
}

// memoryKey names the memory a sticky set holds: its balancer, family
// and uplink, whatever their marks.
type memoryKey struct {
	policy string
	family inet.Family
	uplink string
}

func (s StickySet) memoryKey() memoryKey { return memoryKey{s.Policy, s.Family, s.Uplink} }

// StickySets lists the sticky sets s's table has, as Apply creates them.
func StickySets(s desired.NFT) []StickySet {
	t := build(s)
	return t.sticky
}

// stickyIndex is the uplink's mark as a small number: uplink names and
// policy names may both hold '_' and '-', so "st4_<policy>_<uplink>"
// could name two sets alike; the mark's index cannot.
func stickyIndex(mask, mark uint32) uint32 { return mark >> bits.TrailingZeros32(mask) }

func stickySetName(base string, f inet.Family, idx uint32) string {
	d := "4"
	if f == inet.IPv6 {
		d = "6"
	}
	return fmt.Sprintf("st%s_%s_m%d", d, base, idx)
}

func stickyChainName(base string, idx uint32) string { return fmt.Sprintf("stk_%s_m%d", base, idx) }

// nftDuration prints d as nft 1.0.6 lists a timeout (time_print): days,
// hours, minutes, seconds and milliseconds, the zero ones left out.
func nftDuration(d time.Duration) string {
	ms := d.Milliseconds()
	var b strings.Builder
	for _, u := range []struct {
		n    int64
		name string
	}{{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}} {
		if v := ms / u.n; v > 0 {
			fmt.Fprintf(&b, "%d%s", v, u.name)
			ms -= v * u.n
		}
	}
	if b.Len() == 0 {
		return "0s"
	}
	return b.String()
}

// stickyKey is the key of a sticky set: `ip saddr`, or `ip saddr . ip
// daddr` with ByDestination. The second field goes in the 32-bit register
// right after the first (an IPv6 address fills four).
func stickyKey(f inet.Family, byDst bool) frag {
	sname, sload := addrPayload(f, saddr)
	fr := frag{text: sname, exprs: append(nfprotoIs(f), sload)}
	if byDst {
		dname, dload := addrPayload(f, daddr)
		p := dload.(*expr.Payload)
		q := *p
		q.DestRegister = regConcat2
		if f == inet.IPv6 {
			q.DestRegister = regConcat2 + 3 // NFT_REG32_04: after 16 bytes
		}
		fr.text += " . " + dname
		fr.exprs = append(fr.exprs, &q)
	}
	return fr
}

func stickyKeyType(f inet.Family, byDst bool) (nftables.SetDatatype, string) {
	k, name := typeIPv4, "ipv4_addr"
	if f == inet.IPv6 {
		k, name = typeIPv6, "ipv6_addr"
	}
	if byDst {
		return nftables.MustConcatSetType(k, k), name + " . " + name
	}
	return k, name
}

// stickyBalancer makes, for a sticky balancer named base, one set per
// family and candidate uplink and one chain per candidate uplink that
// refreshes the connection's entry and marks it. It returns the rules that
// go in front of the balancer's choice (one lookup per candidate: only new
// connections walk them) and the chain that stands in for mark_<u>.
func (b *builder) stickyBalancer(base string, bal desired.Balancer) {
	st := bal.Sticky
	fams := map[uint32][]inet.Family{}
	var order []uint32
	for _, f := range inet.Families {
		for _, bk := range bal.For(f).Buckets {
			if _, seen := fams[bk.Mark]; !seen {
				order = append(order, bk.Mark)
			}
			fams[bk.Mark] = append(fams[bk.Mark], f)
		}
	}
	if b.stickyChains == nil {
		b.stickyChains = map[string]map[uint32]string{}
	}
	chains := map[uint32]string{}
	b.stickyChains[base] = chains
	for _, m := range order {
		u := b.byMark[m]
		idx := stickyIndex(b.s.Mask, m)
		ch := b.addChain(stickyChainName(base, idx), nil)
		chains[m] = ch.name
		for _, f := range fams[m] {
			name := stickySetName(base, f, idx)
			key, typeText := stickyKeyType(f, st.ByDestination)
			b.addSet(&set{name: name, key: key, typeText: typeText, dynamic: true, timeout: st.Timeout, keep: true})
			pol := base
			if base == "default" {
				pol = ""
			}
			b.t.sticky = append(b.t.sticky, StickySet{Name: name, Policy: pol, Family: f, Uplink: u.Name, Mark: m,
				ByDestination: st.ByDestination, Timeout: st.Timeout})
			k := stickyKey(f, st.ByDestination)
			ch.rules = append(ch.rules, newRule(frag{
				text: fmt.Sprintf("update @%s { %s timeout %s }", name, k.text, nftDuration(st.Timeout)),
				exprs: append(k.exprs, &expr.Dynset{SrcRegKey: reg, SetName: name, Operation: dynsetOpUpdate,
					Timeout: st.Timeout}),
			}))
		}
		ch.rules = append(ch.rules, newRule(verdict(expr.VerdictGoto, markChain(u))))
	}
}

// stickyRules are the lookups in front of a sticky balancer's choice for
// one family: a source remembered for a candidate goes to that
// candidate's chain (which refreshes it).
func (b *builder) stickyRules(base string, st desired.Sticky, c desired.Choice, f inet.Family) []*rule {
	if len(c.Buckets) < 2 {
		// One candidate: its chain records the source all the same.
		return nil
	}
	var rs []*rule
	for _, bk := range c.Buckets {
		name := stickySetName(base, f, stickyIndex(b.s.Mask, bk.Mark))
		k := stickyKey(f, st.ByDestination)
		l := lookup(name)
		rs = append(rs, newRule(frag{text: k.text + " @" + name, exprs: append(k.exprs, l)},
			verdict(expr.VerdictGoto, b.stickyChains[base][bk.Mark])))
	}
	return rs
}

// target is the chain a balancer's choice of uplink u goes to: u's sticky
// chain for a sticky balancer, else mark_<u>.
func (b *builder) target(base string, u desired.Uplink) string {
	if c, ok := b.stickyChains[base][u.Mark]; ok {
		return c
	}
	return markChain(u)
}

// StickyEntry is one source (and destination, with ByDestination) a
// sticky set remembers, and how long still.
type StickyEntry struct {
	Src, Dst netip.Addr
	Left     time.Duration
}

// StickyEntries reads what the kernel's sticky sets remember, by set
// name; a set the table does not have is left out. One dump per set: the
// caller paces the calls (a full set is StickySize elements).
func (m *Manager) StickyEntries(sets []StickySet) (map[string][]StickyEntry, error) {
	names := make([]string, len(sets))
	for i, s := range sets {
		names[i] = s.Name
	}
	elems, err := m.dumpSets(names)
	if err != nil {
		return nil, err
	}
	out := map[string][]StickyEntry{}
	for _, s := range sets {
		n := 4
		if s.Family == inet.IPv6 {
			n = 16
		}
		for _, e := range elems[s.Name] {
			if len(e.Key) < n {
				continue
			}
			se := StickyEntry{Left: e.Expires}
			se.Src, _ = netip.AddrFromSlice(e.Key[:n])
			if s.ByDestination && len(e.Key) >= 2*n {
				se.Dst, _ = netip.AddrFromSlice(e.Key[n : 2*n])
			}
			out[s.Name] = append(out[s.Name], se)
		}
	}
	return out, nil
}

// dumpSets reads the elements of the named sets of the Manager's table;
// a set the table does not have is left out, and so is every set while
// the table is not there. One dump per set: the callers pace theirs (a
// full set is tens of thousands of elements).
func (m *Manager) dumpSets(names []string) (map[string][]nftables.SetElement, error) {
	m.mu.Lock()
	if err := m.check(); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	name := m.table
	m.mu.Unlock()
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	dumped, err := m.readSets(name, func(s *nftables.Set) bool { return want[s.Name] })
	out := map[string][]nftables.SetElement{}
	for n, d := range dumped {
		out[n] = d.elems
	}
	return out, err
}

// setDump is a set of the kernel's table and the elements it holds.
type setDump struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

// readSets reads the elements of the sets of table name that want
// takes (none while the table is not there). On a connection of its
// own, used once: a dump must never share the lasting connection with
// Apply (a dump cut short there, say for a set deleted meanwhile, left
// its answer for the next request to read, and status showed a
// second-old memory as new). It takes nothing the Manager's lock guards
// but the namespace, fixed at New: callers may hold the lock or not.
func (m *Manager) readSets(name string, want func(*nftables.Set) bool) (map[string]setDump, error) {
	c, err := m.transient()
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
	have, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("listing the sets of table inet %s: %w", name, err)
	}
	out := map[string]setDump{}
	for _, s := range have {
		if !want(s) {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("reading set %s: %w", s.Name, err)
		}
		out[s.Name] = setDump{set: s, elems: elems}
	}
	return out, nil
}
