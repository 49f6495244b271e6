package policy

import (
	"bytes"
	"cmp"
	"container/heap"
	"fmt"
	"slices"

	"github.com/wanpin/wanpin/pkg/inet"
)

// A Program is the policies of one hook (prerouting for forwarded
// traffic, output for the router's own), compiled in their order, first
// match wins: pkg/rules loads it as rules, core.Explain evaluates it, so
// the two cannot disagree.
//
// Runs of policies that each test one key (a destination, a source, an
// inbound interface, a user: what generated policies look like, "this
// host goes out through that uplink") are folded into one verdict-map
// lookup: the key is looked up once and the map names the first policy
// of the run whose condition holds. For the kernel that is one rule and
// one map instead of a rule per policy; 10,000 such policies apply in a
// fraction of the time and a new connection costs one lookup, not 10,000
// comparisons. The fold keeps first-match order: within a run each key
// value goes to the earliest policy that has it, and a run only holds
// conditions that commute with each other (keys of different address
// families, which no packet has both of).
type Program []Item

// Item is one step of a Program: a rule of one policy, or a Map.
type Item struct {
	Policy int  // the policy's index, for a rule
	Rule   Rule // when Map is nil
	Map    *Map
}

// Map stands for a run of one-condition rules: the key is loaded as the
// conditions did and looked up; its element gives the policy.
type Map struct {
	Name     string
	Key      string      // the key as nft prints it: "ip daddr"
	NFProto  inet.Family // the family the key needs (0: either)
	Load     Load
	Type     SetType
	Interval bool
	Elems    []MapElem
}

// MapElem maps a key, or with Interval the range from Key to End
// (exclusive; nil: to the top), to a policy.
type MapElem struct {
	Key, End []byte
	Text     string
	Policy   int
}

// FoldMin is the shortest run of one-key rules of one family folded
// into a map: below it the rules stay as they are, which is as fast and
// easier to read in `nft list`.
const FoldMin = 8

// Hooks are a Program's two places: forwarded traffic (prerouting) and
// the router's own (output).
type Hooks [2]Program

// Forwarded and Local index Hooks.
const (
	Forwarded = 0
	Local     = 1
)

// Build compiles the rules of the compiled policies (cs[i] is policy i)
// into each hook's Program. The maps are named pm1, pm2...; a run that
// both hooks fold alike (a destination applies to both) is one Map, the
// same pointer in both Programs, as a policy's own set serves its rules
// of both hooks: the kernel holds and loads it once (per hook, 10
// policies of 1,000 prefixes each took 215 ms per apply instead of 128,
// BenchmarkPlanApply).
func Build(cs []Compiled) Hooks {
	folds := &foldCache{byRun: map[string]*Map{}}
	var h Hooks
	for hook := range h {
		b := &programBuilder{folds: folds}
		for i, c := range cs {
			rules := c.Forward
			if hook == Local {
				rules = c.Local
			}
			for _, r := range rules {
				k, ok := foldKey(r)
				if !ok {
					b.flush()
					b.out = append(b.out, Item{Policy: i, Rule: r})
					continue
				}
				if b.conflicts(k) {
					b.flush()
				}
				g := b.group(k)
				g.rules = append(g.rules, pending{policy: i, rule: r})
			}
		}
		b.flush()
		h[hook] = b.out
	}
	return h
}

// foldCache: the maps folded so far, by the run they stand for.
type foldCache struct {
	byRun map[string]*Map
	n     int
}

// runID names a run by what decides its map: each rule's policy and its
// one condition's values (a set by identity: Compile gives a policy's
// rules of both hooks the same *Set).
func runID(g *group) string {
	var b []byte
	b = fmt.Appendf(b, "%d/%v|", g.key.nfproto, g.key.load)
	for _, p := range g.rules {
		c := p.rule.Conds[0]
		if c.Set != nil {
			b = fmt.Appendf(b, "%d:%p|", p.policy, c.Set)
			continue
		}
		b = fmt.Appendf(b, "%d:%x/%x-%x|", p.policy, c.Eq, c.Mask, c.Last)
	}
	return string(b)
}

func (f *foldCache) fold(g *group) *Map {
	id := runID(g)
	if m, ok := f.byRun[id]; ok {
		return m
	}
	f.n++
	m := foldGroup(g, fmt.Sprintf("pm%d", f.n))
	f.byRun[id] = m
	return m
}

// Match is the index of the first policy whose rule holds for f.
func (p Program) Match(f Flow) (int, bool) {
	for _, it := range p {
		if it.Map == nil {
			if it.Rule.Matches(f) {
				return it.Policy, true
			}
			continue
		}
		if i, ok := it.Map.lookup(f); ok {
			return i, true
		}
	}
	return 0, false
}

func (m *Map) lookup(f Flow) (int, bool) {
	if m.NFProto != 0 && f.Family() != m.NFProto {
		return 0, false
	}
	key, ok := f.load(m.Load)
	if !ok {
		return 0, false
	}
	for _, e := range m.Elems {
		if !m.Interval {
			if bytes.Equal(e.Key, key) {
				return e.Policy, true
			}
			continue
		}
		if bytes.Compare(e.Key, key) <= 0 && (e.End == nil || bytes.Compare(key, e.End) < 0) {
			return e.Policy, true
		}
	}
	return 0, false
}

// groupKey is what a foldable rule tests: its one key, in one family.
type groupKey struct {
	nfproto inet.Family
	load    Load
}

// foldKey: a rule is foldable when it is one condition, a comparison or
// a lookup in the policy's own set, with no protocol dependency, of a
// key type a map can hold.
func foldKey(r Rule) (groupKey, bool) {
	if len(r.Conds) != 1 {
		return groupKey{}, false
	}
	c := r.Conds[0]
	if c.L4Proto != 0 || c.Key == "" || c.Last != nil || loadType(c.Load) == 0 {
		return groupKey{}, false
	}
	if c.Set != nil && c.Set.Name == "" {
		return groupKey{}, false // anonymous: a shared set like tcp_udp is never alone
	}
	if c.Set != nil && c.Set.Learned {
		return groupKey{}, false // its elements come and go at run time: no map can hold them
	}
	return groupKey{c.NFProto, c.Load}, true
}

// loadType is the type of the key a load fetches, 0 when a map of it is
// not worth having.
func loadType(l Load) SetType {
	switch {
	case l.Kind == LoadPayload && l.Base == BaseNetwork && l.Len == 4:
		return TypeIPv4
	case l.Kind == LoadPayload && l.Base == BaseNetwork && l.Len == 16:
		return TypeIPv6
	case l.Kind == LoadMeta && l.Meta == MetaIIFName:
		return TypeIfname
	case l.Kind == LoadMeta && l.Meta == MetaSKUID:
		return TypeUID
	case l.Kind == LoadMeta && l.Meta == MetaSKGID:
		return TypeGID
	case l.Kind == LoadCgroup:
		return TypeCgroupV2
	}
	return 0
}

type pending struct {
	policy int
	rule   Rule
}

type group struct {
	key   groupKey
	rules []pending
}

type programBuilder struct {
	folds *foldCache
	run   []*group
	out   Program
}

func (b *programBuilder) group(k groupKey) *group {
	for _, g := range b.run {
		if g.key == k {
			return g
		}
	}
	g := &group{key: k}
	b.run = append(b.run, g)
	return g
}

// conflicts: a packet could meet both k and a key of another group of
// the run, so their order matters and they cannot both be folded. Keys
// of different families commute; a key of no family (an interface, a
// user) meets every other.
func (b *programBuilder) conflicts(k groupKey) bool {
	for _, g := range b.run {
		if g.key == k {
			continue
		}
		if g.key.nfproto == 0 || k.nfproto == 0 || g.key.nfproto == k.nfproto {
			return true
		}
	}
	return false
}

// flush ends the run: each group becomes a map, or its rules when it is
// short. The groups commute, so their order among themselves is free.
func (b *programBuilder) flush() {
	for _, g := range b.run {
		if len(g.rules) < FoldMin {
			for _, p := range g.rules {
				b.out = append(b.out, Item{Policy: p.policy, Rule: p.rule})
			}
			continue
		}
		b.out = append(b.out, Item{Map: b.folds.fold(g)})
	}
	b.run = nil
}

func foldGroup(g *group, name string) *Map {
	c0 := g.rules[0].rule.Conds[0]
	t := loadType(g.key.load)
	m := &Map{Name: name, Key: c0.Key, NFProto: g.key.nfproto, Load: g.key.load, Type: t,
		Interval: t == TypeIPv4 || t == TypeIPv6}
	if !m.Interval {
		// Exact keys: the first policy that names a key has it.
		seen := map[string]bool{}
		for _, p := range g.rules {
			for _, e := range exactElems(p.rule.Conds[0]) {
				if !seen[string(e.Key)] {
					seen[string(e.Key)] = true
					e.Policy = p.policy
					m.Elems = append(m.Elems, e)
				}
			}
		}
		slices.SortStableFunc(m.Elems, func(a, b MapElem) int {
			return KeyCmp(t.Native())(Elem{Key: a.Key}, Elem{Key: b.Key})
		})
		return m
	}
	if elems, ok := disjointSets(g); ok {
		m.Elems = elems
		return m
	}
	m.Elems = sweptElems(g, t.Width())
	return m
}

// sweptElems is the map's elements of any run of address conditions.
func sweptElems(g *group, width int) []MapElem {
	var elems []MapElem
	var owned []owned
	for order, p := range g.rules {
		for _, iv := range condIntervals(p.rule.Conds[0], width) {
			owned = append(owned, ownedInterval(iv, order, p.policy))
		}
	}
	for _, seg := range firstOwner(owned, width) {
		for _, e := range intervalElems([]interval{seg.iv}, width, func(iv interval) string { return addrIntervalText(iv, width) }) {
			elems = append(elems, MapElem{Key: e.Key, End: e.End, Text: e.Text, Policy: seg.policy})
		}
	}
	return elems
}

// disjointSets is the map's elements when every rule of the run looks
// up its policy's set and no two ranges overlap nor touch within one
// policy: then no range has two owners and none merges with its
// neighbour, so the sets' own
// elements (ranges and text made once, by Compile) are the map's, in
// key order (ranges of two policies may touch). Otherwise the sweep in
// firstOwner decides. (The common
// case, policies of distinct prefixes: building the map went from a
// third of an apply's Go time to a sort.)
func disjointSets(g *group) ([]MapElem, bool) {
	n := 0
	for _, p := range g.rules {
		if p.rule.Conds[0].Set == nil {
			return nil, false
		}
		n += len(p.rule.Conds[0].Set.Elems)
	}
	out := make([]MapElem, 0, n)
	for _, p := range g.rules {
		for _, e := range p.rule.Conds[0].Set.Elems {
			out = append(out, MapElem{Key: e.Key, End: e.End, Text: e.Text, Policy: p.policy})
		}
	}
	slices.SortFunc(out, func(a, b MapElem) int { return bytes.Compare(a.Key, b.Key) })
	for i := 1; i < len(out); i++ {
		// Ends are exclusive: touching is End == next Key; a nil End
		// runs to the top and so meets whatever follows.
		prev, next := out[i-1], out[i]
		if prev.End == nil {
			return nil, false
		}
		c := bytes.Compare(prev.End, next.Key)
		if c > 0 || c == 0 && prev.Policy == next.Policy {
			return nil, false
		}
	}
	return out, true
}

// exactElems is the keys an exact-typed condition matches.
func exactElems(c Cond) []MapElem {
	if c.Set != nil {
		out := make([]MapElem, len(c.Set.Elems))
		for i, e := range c.Set.Elems {
			out[i] = MapElem{Key: e.Key, Text: e.Text}
		}
		return out
	}
	return []MapElem{{Key: c.Eq, Text: c.Value}}
}

// condIntervals is the address ranges an address condition matches.
func condIntervals(c Cond, width int) []interval {
	if c.Set != nil {
		var out []interval
		for _, e := range c.Set.Elems {
			last := maxKey(width)
			if e.End != nil {
				last = keyToU128(e.End).sub(u128{0, 1})
			}
			out = append(out, interval{keyToU128(e.Key), last})
		}
		return out
	}
	first := keyToU128(c.Eq)
	last := first
	if c.Mask != nil {
		last = u128{first.hi | ^keyToU128(c.Mask).hi, first.lo | ^keyToU128(c.Mask).lo}.and(maxKey(width))
	}
	return []interval{{first, last}}
}

// keyToU128 reads a big-endian key of up to 16 bytes.
func keyToU128(b []byte) u128 {
	var v [16]byte
	copy(v[16-len(b):], b)
	return u128{beUint64(v[:8]), beUint64(v[8:])}
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

type owned struct {
	iv     interval
	order  int
	policy int
}

func ownedInterval(iv interval, order, policy int) owned { return owned{iv, order, policy} }

type segment struct {
	iv     interval
	policy int
}

// firstOwner splits the union of the intervals into disjoint segments,
// each owned by the lowest-order interval that covers it, with adjacent
// segments of one policy merged: a sweep over the interval ends with a
// heap of the intervals open at each point, O(n log n).
func firstOwner(in []owned, width int) []segment {
	type event struct {
		at    u128
		start bool
		idx   int
	}
	var evs []event
	top := maxKey(width)
	for i, o := range in {
		evs = append(evs, event{o.iv.first, true, i})
		if o.iv.last != top {
			evs = append(evs, event{o.iv.last.addOne(), false, i})
		}
	}
	slices.SortFunc(evs, func(a, b event) int {
		if c := a.at.cmp(b.at); c != 0 {
			return c
		}
		// Ends before starts at one point: the ending interval does not
		// cover it.
		if a.start != b.start {
			if a.start {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.idx, b.idx)
	})
	open := &ownerHeap{in: in, closed: map[int]bool{}}
	var out []segment
	emit := func(first, last u128) {
		for open.Len() > 0 && open.closed[open.top()] {
			heap.Pop(open)
		}
		if open.Len() == 0 {
			return
		}
		p := in[open.top()].policy
		if n := len(out); n > 0 && out[n-1].policy == p && out[n-1].iv.last != top && out[n-1].iv.last.addOne() == first {
			out[n-1].iv.last = last
			return
		}
		out = append(out, segment{interval{first, last}, p})
	}
	for i := 0; i < len(evs); {
		at := evs[i].at
		for ; i < len(evs) && evs[i].at == at; i++ {
			if evs[i].start {
				heap.Push(open, evs[i].idx)
			} else {
				open.closed[evs[i].idx] = true
			}
		}
		// The segment from here to the next event (or the top).
		last := top
		if i < len(evs) {
			last = evs[i].at.sub(u128{0, 1})
		}
		emit(at, last)
	}
	return out
}

// ownerHeap holds indexes of open intervals, lowest order on top; closed
// ones are dropped when they surface.
type ownerHeap struct {
	in     []owned
	idx    []int
	closed map[int]bool
}

func (h *ownerHeap) Len() int           { return len(h.idx) }
func (h *ownerHeap) Less(i, j int) bool { return h.in[h.idx[i]].order < h.in[h.idx[j]].order }
func (h *ownerHeap) Swap(i, j int)      { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *ownerHeap) Push(x any)         { h.idx = append(h.idx, x.(int)) }
func (h *ownerHeap) Pop() any {
	n := len(h.idx)
	x := h.idx[n-1]
	h.idx = h.idx[:n-1]
	return x
}
func (h *ownerHeap) top() int { return h.idx[0] }
