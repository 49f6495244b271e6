// Package neighbours finds what other programs on the router do with the
// things wanpin uses: fwmark and ct mark bits, ip rule priorities.
// pkg/neighbours/observe reads the kernel's ip rules and nftables rules
// (iptables-nft's included) into a Snapshot, and Analyze says, for one mark mask and
// rule block, which of them clash, what breaks, which program it
// probably is, and which mask and block would be free.
//
// Analyze is pure: the daemon runs it at start, on every reload and on
// the drift check's pace, and `wanpin check` on the router it runs on.
package neighbours

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/wanpin/wanpin/pkg/inet"
)

// Rule is another program's ip rule.
type Rule struct {
	Family   inet.Family
	Priority int
	// Mark and Mask: the rule tests fwmark Mark/Mask (HasMark); Invert
	// is `not fwmark`.
	HasMark    bool
	Mark, Mask uint32
	Invert     bool
	Table      int
	// Suppress is suppress_prefixlength (-1: none): such a rule takes
	// only routes more specific than that, never the default route.
	Suppress int
	Text     string // as `ip rule` prints it, for people
}

// MarkUse is a rule of another nftables table (iptables-nft's among
// them) that reads or writes a mark.
type MarkUse struct {
	Table  string // "ip mangle", "inet wg-quick-wg0"
	Chain  string
	Handle uint64
	// Which mark and how. Bits are the bits it writes (Sets) or
	// compares (not Sets); Whole: it writes every bit (`meta mark set
	// 0x1`, `meta mark set ct mark`), FromCT: the value is the ct mark's
	// (a copy, `meta mark set ct mark`, CONNMARK --restore-mark).
	CT     bool // the ct mark, not the packet's
	Sets   bool
	Bits   uint32
	Whole  bool
	FromCT bool
	Text   string
	// Guarded: the rule acts only on packets whose mark is exactly
	// OnlyMark (it tests that first).
	Guarded  bool
	OnlyMark uint32
	Exact    bool // a test of the whole mark against one value
	// The base chain's hook (NF_INET_*) and priority, when Hooked (a
	// rule of a regular chain, jumped to, has none).
	Hooked   bool
	Hook     uint32
	Priority int32
}

// Hook numbers and the priority wanpin's prerouting and output chains
// run at (pkg/rules: mangle + 1, after the others' mangle chains).
const (
	hookPrerouting     = 0
	hookOutput         = 3
	wanpinMarkPriority = -149
)

// Snapshot is what the other programs have installed.
type Snapshot struct {
	Rules []Rule
	Marks []MarkUse
	// Unread says what could not be read and why (no root for nftables).
	Unread []string
}

// Severity of a finding.
type Severity int

const (
	// Warning: suspicious, or harmless for reasons the message gives.
	Warning Severity = iota
	// Breaking: traffic breaks (theirs or wanpin's); wanpin refuses to
	// start or reload unless the file allows it (allow_conflicts).
	Breaking
)

func (s Severity) String() string {
	if s == Breaking {
		return "breaking"
	}
	return "warning"
}

// Finding is one clash.
type Finding struct {
	Severity Severity `json:"-"`
	Level    string   `json:"severity"`
	// Program is who the other side probably is ("tailscale", "wg-quick",
	// "kube-proxy", "docker", "mwan3", "pbr", "mullvad"); "" unknown.
	Program string `json:"program,omitempty"`
	// ID names the other side so that allow_conflicts can: "ip rule
	// 5210", "nft ip mangle PREROUTING handle 7".
	ID     string `json:"id"`
	What   string `json:"what"`   // the other side, as its tool prints it
	Breaks string `json:"breaks"` // what goes wrong, for people
	// Allowed: the file's allow_conflicts names it, so it does not stop
	// wanpin.
	Allowed bool `json:"allowed,omitempty"`
	inBlock bool // a rule in wanpin's priority block (else: marks)
}

func (f Finding) String() string {
	who := ""
	if f.Program != "" {
		who = " (" + f.Program + ")"
	}
	return fmt.Sprintf("%s%s: %s: %s", f.ID, who, f.What, f.Breaks)
}

// Mine is what wanpin uses.
type Mine struct {
	Mask     uint32
	Priority int // the first of its block
	Block    int // how many priorities the block holds
	Uplinks  int
	// Allow is the file's allow_conflicts: programs or finding IDs.
	Allow []string
}

// Report is Analyze's answer.
type Report struct {
	Findings []Finding
	Unread   []string
	// A mask and a rule block that no other program's rule touches on
	// this router (0 when none is free, or when the current ones are).
	FreeMask     uint32
	FreePriority int
}

// Breaking reports the findings that stop wanpin (not allowed).
func (r Report) Breaking() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity == Breaking && !f.Allowed {
			out = append(out, f)
		}
	}
	return out
}

// Error is the one message for a start or reload refused for Breaking
// findings, with what to do.
func (r Report) Error() string {
	br := r.Breaking()
	if len(br) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "another program on this router uses what wanpin would (%d clash", len(br))
	if len(br) > 1 {
		b.WriteString("es")
	}
	b.WriteString("):")
	var progs []string
	for _, f := range br {
		b.WriteString("\n  " + f.String())
		name := f.ID
		if f.Program != "" {
			name = f.Program
		}
		if !slices.Contains(progs, name) {
			progs = append(progs, name)
		}
	}
	b.WriteString("\n" + r.Advice())
	fmt.Fprintf(&b, "\nor, if this is intended, allow it: allow_conflicts = [%s]", quoteList(progs))
	return b.String()
}

// Advice proposes what is free, for the messages.
func (r Report) Advice() string {
	var parts []string
	if r.FreeMask != 0 {
		parts = append(parts, fmt.Sprintf("mark_mask = %#08x", r.FreeMask))
	}
	if r.FreePriority != 0 {
		parts = append(parts, fmt.Sprintf("rule_priority = %d", r.FreePriority))
	}
	if len(parts) == 0 {
		return "no free mark mask or rule block found: choose one by hand"
	}
	return "free on this router: " + strings.Join(parts, ", ")
}

func quoteList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

// Analyze finds the clashes of s with m.
func Analyze(s Snapshot, m Mine) Report {
	if m.Block == 0 {
		m.Block = 1000
	}
	r := Report{Unread: s.Unread}
	last := m.Priority + m.Block - 1
	for _, ru := range s.Rules {
		if f, ok := ruleFinding(ru, m, last); ok {
			r.Findings = append(r.Findings, f)
		}
	}
	for _, mu := range s.Marks {
		if f, ok := markFinding(mu, m.Mask); ok {
			r.Findings = append(r.Findings, f)
		}
	}
	for i := range r.Findings {
		f := &r.Findings[i]
		f.Level = f.Severity.String()
		f.Allowed = slices.Contains(m.Allow, f.ID) || (f.Program != "" && slices.Contains(m.Allow, f.Program))
	}
	markClash, prioClash := false, false
	for _, f := range r.Findings {
		switch {
		case f.inBlock:
			prioClash = true
		case f.Severity == Breaking:
			markClash = true
		}
	}
	if markClash {
		r.FreeMask = freeMask(usedBits(s), m)
	}
	if prioClash {
		r.FreePriority = freeBlock(s.Rules, m)
	}
	return r
}

func ruleFinding(ru Rule, m Mine, last int) (Finding, bool) {
	f := Finding{ID: fmt.Sprintf("ip rule %d", ru.Priority), What: ru.Text, Program: ruleProgram(ru)}
	if ru.Priority >= m.Priority && ru.Priority <= last {
		// Suspicious, not breaking: wanpin never touches it, and its place
		// among wanpin's rules is fixed by its priority; but what it
		// matches skips (or takes) wanpin's rules after it.
		f.Severity, f.inBlock = Warning, true
		f.Breaks = fmt.Sprintf("its rule sits in wanpin's block %d-%d, between wanpin's rules: what it matches skips wanpin's rules after it", m.Priority, last)
		return f, true
	}
	if preempted(ru, m, last) {
		// Another program's rule after wanpin's block routes nothing
		// wanpin routes first: the LAN's balanced connections (they
		// carry wanpin's bits as well, so an exact `fwmark 0x10` no
		// longer equals them) and the router's own (`iif lo lookup
		// <router table>` has no mark condition). Its program decided
		// before wanpin started; it should know it no longer does.
		f.Severity = Warning
		f.Breaks = fmt.Sprintf("comes after wanpin's rules (%d-%d), which route first what it would match (the LAN's connections wanpin balances, and the router's own traffic with router_traffic = \"balance\"): give it a priority below %d for it to decide first", m.Priority, last, m.Priority)
		return f, true
	}
	if !ru.HasMark {
		if ru.Priority < m.Priority && ru.Suppress < 0 && ru.Table != 0 && ru.Table != 253 && ru.Table != 254 && ru.Table != 255 {
			// `lookup 52` for every packet (Tailscale's exit node):
			// it decides before wanpin's rules do.
			f.Severity = Warning
			f.Breaks = fmt.Sprintf("comes before wanpin's rules (%d) and looks every packet up in table %d: what that table routes does not follow wanpin's uplinks", m.Priority, ru.Table)
			return f, true
		}
		return f, false
	}
	overlap := ru.Mask & m.Mask
	if overlap == 0 {
		return f, false
	}
	if ru.Mask == ^uint32(0) && ru.Mark&m.Mask == 0 {
		// An exact value outside wanpin's bits (wg-quick's 51820): a
		// packet wanpin marked never equals it, and wanpin leaves the
		// packets that carry it alone.
		if !ru.Invert || ru.Priority > last {
			return f, false
		}
		// `not fwmark 51820 lookup 51820` before wanpin's rules: every
		// other packet takes it, wanpin's included (a full tunnel).
		f.Severity = Warning
		f.Breaks = fmt.Sprintf("comes before wanpin's rules (%d) and sends every packet not marked %#x to table %d, wanpin's balanced ones included: what that table routes does not follow wanpin's uplinks", m.Priority, ru.Mark, ru.Table)
		return f, true
	}
	if ru.Priority > last {
		if ru.Mask == ^uint32(0) {
			return f, false // wanpin's rules decide first; exact values are never met
		}
		f.Severity = Warning
		f.Breaks = fmt.Sprintf("tests mark bits %#08x that wanpin writes; it comes after wanpin's rules, so only packets wanpin does not route reach it", overlap)
		return f, true
	}
	f.Severity = Breaking
	f.Breaks = fmt.Sprintf("tests mark bits %#08x that wanpin writes, before wanpin's rules (%d): packets wanpin marks for an uplink can take this rule's route, and the packets this program marks lose it when wanpin rewrites those bits", overlap, m.Priority)
	return f, true
}

// preempted: a rule after wanpin's block that looks up a table of its
// own for packets carrying no mark bit of wanpin's (none tested, or an
// exact value outside the mask, or its negation). The main, default and
// local tables and suppress rules take nothing from wanpin; rules that
// test wanpin's bits are judged below.
func preempted(ru Rule, m Mine, last int) bool {
	if ru.Priority <= last || ru.Suppress >= 0 || ru.Table == 0 || ru.Table == 253 || ru.Table == 254 || ru.Table == 255 {
		return false
	}
	return !ru.HasMark || ru.Mask&m.Mask == 0 || ru.Mask == ^uint32(0) && ru.Mark&m.Mask == 0
}

func markFinding(mu MarkUse, mask uint32) (Finding, bool) {
	f := Finding{ID: fmt.Sprintf("nft %s %s handle %d", mu.Table, mu.Chain, mu.Handle), What: mu.Text, Program: tableProgram(mu.Table, mu.Chain)}
	which := "packet mark"
	if mu.CT {
		which = "ct mark"
	}
	if mu.Guarded && mu.OnlyMark&mask == 0 && mu.OnlyMark != 0 {
		// Only packets carrying another program's exact mark, which
		// wanpin leaves alone.
		return f, false
	}
	switch {
	case mu.Sets && mu.FromCT && !mu.CT:
		// The ct mark holds wanpin's pin: copied whole, the bits are the
		// ones wanpin itself restores. Before wanpin's own chain (wg-quick's
		// premangle, iptables-nft's mangle) it is harmless; after it, a new
		// connection's choice, not yet in the ct mark, is wiped.
		if mu.Hooked && (mu.Hook == hookPrerouting || mu.Hook == hookOutput) && mu.Priority < wanpinMarkPriority {
			return f, false
		}
		f.Severity = Warning
		f.Breaks = "copies the whole ct mark into the packet mark after wanpin's chain has run: wanpin's pins survive it (they are in the ct mark too), but a new connection's uplink choice, not yet saved there, is wiped and the connection follows the ip rules after wanpin's"
		return f, true
	case mu.Sets && mu.Whole:
		f.Severity = Warning
		f.Breaks = fmt.Sprintf("overwrites the whole %s, wanpin's bits %#08x included, on the packets it matches: harmless only for that program's own packets", which, mask)
		return f, true
	case mu.Sets && mu.Bits&mask != 0:
		f.Severity = Breaking
		f.Breaks = fmt.Sprintf("writes %s bits %#08x that wanpin uses for its uplinks: connections it touches move to another uplink or lose their pin", which, mu.Bits&mask)
		return f, true
	case !mu.Sets && mu.Bits&mask != 0:
		f.Severity = Warning
		f.Breaks = fmt.Sprintf("tests %s bits %#08x that wanpin writes: packets wanpin marks for an uplink can meet its condition", which, mu.Bits&mask)
		return f, true
	}
	return f, false
}

// ruleProgram recognises the usual owners of ip rules.
func ruleProgram(ru Rule) string {
	switch {
	case ru.Priority >= 5200 && ru.Priority <= 5299 && (ru.Table == 52 || ru.HasMark && ru.Mask == 0xff0000):
		return "tailscale"
	case ru.HasMark && ru.Mark == 0x6d6f6c65:
		return "mullvad"
	case ru.HasMark && ru.Invert && ru.Mask == ^uint32(0) && int(ru.Mark) == ru.Table:
		return "wg-quick"
	case ru.HasMark && ru.Mask == 0x3f00:
		return "mwan3"
	case ru.HasMark && ru.Mask == 0xff0000 && ru.Priority >= 30000:
		return "pbr"
	}
	return ""
}

// tableProgram recognises the usual owners of nftables and iptables
// chains by their names.
func tableProgram(table, chain string) string {
	_, name, _ := strings.Cut(table, " ")
	for _, p := range []struct{ prefix, program string }{
		{"KUBE-", "kube-proxy"}, {"DOCKER", "docker"}, {"ts-", "tailscale"},
		{"mwan3", "mwan3"}, {"pbr", "pbr"}, {"cali-", "calico"}, {"CILIUM", "cilium"},
	} {
		if strings.HasPrefix(chain, p.prefix) || strings.HasPrefix(name, p.prefix) {
			return p.program
		}
	}
	switch {
	case strings.HasPrefix(name, "wg-quick"):
		return "wg-quick"
	case strings.HasPrefix(name, "mullvad"):
		return "mullvad"
	case strings.HasPrefix(name, "tailscale"):
		return "tailscale"
	}
	return ""
}

// usedBits is every mark bit another program's rule tests or writes.
func usedBits(s Snapshot) uint32 {
	var used uint32
	for _, ru := range s.Rules {
		if !ru.HasMark {
			continue
		}
		if ru.Mask == ^uint32(0) {
			used |= ru.Mark // an exact value: the bits it has
		} else {
			used |= ru.Mask
		}
	}
	for _, mu := range s.Marks {
		if !mu.Whole {
			used |= mu.Bits
		}
	}
	return used
}

// freeMask is a contiguous mask no other program uses with room for the
// uplinks: the default's bits 24-30 if free, else the highest free run
// of the current mask's width (at least what the uplinks need).
func freeMask(used uint32, m Mine) uint32 {
	need := bits.Len(uint(m.Uplinks)) // marks 1..n
	width := max(bits.OnesCount32(m.Mask), need, 1)
	const preferred = 0x7f000000
	if used&preferred == 0 && bits.OnesCount32(preferred) >= need {
		return preferred
	}
	for w := width; w >= need && w >= 1; w-- {
		for shift := 32 - w; shift >= 0; shift-- {
			cand := uint32((uint64(1)<<w - 1) << shift)
			if cand&used == 0 {
				return cand
			}
		}
	}
	return 0
}

// freeBlock is the first block of priorities from 10000 (in steps of
// 1000, below the main table's 32766) that no other program's rule is in.
func freeBlock(rules []Rule, m Mine) int {
	for start := 10000; start+m.Block <= 32766; start += 1000 {
		free := true
		for _, ru := range rules {
			if ru.Priority >= start && ru.Priority < start+m.Block {
				free = false
				break
			}
		}
		if free {
			return start
		}
	}
	return 0
}
