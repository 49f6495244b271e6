package neighbours

import (
	"testing"

	"github.com/wanpin/wanpin/pkg/inet"
)

func TestAnalyze(t *testing.T) {
	def := Mine{Mask: 0x7f000000, Priority: 10000, Block: 1000, Uplinks: 2}
	cases := []struct {
		name     string
		s        Snapshot
		m        Mine
		severity []Severity // of the findings, in order
		program  string
		freeMask uint32
		freePrio int
	}{
		{"kube-proxy's 0x4000 under the default mask", Snapshot{Marks: []MarkUse{
			{Table: "ip nat", Chain: "KUBE-MARK-MASQ", Sets: true, Bits: 0x4000},
			{Table: "ip nat", Chain: "KUBE-POSTROUTING", Bits: 0x4000}}}, def, nil, "", 0, 0},
		{"a firewall writing wanpin's bits", Snapshot{Marks: []MarkUse{
			{Table: "inet filter", Chain: "mangle", Sets: true, Bits: 0x0f000000}}}, def,
			[]Severity{Breaking}, "", 0x00fe0000, 0}, // the highest free run of the mask's 7 bits
		{"a rule inside wanpin's block", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 10500, Table: 100, Text: "10500: from all lookup 100"}}}, def,
			[]Severity{Warning}, "", 0, 11000},
		// Started before wanpin: its full tunnel gets only what wanpin
		// leaves to the main table.
		{"wg-quick after wanpin's rules", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 32764, HasMark: true, Mark: 51820, Mask: ^uint32(0), Invert: true, Table: 51820, Suppress: -1},
			{Family: inet.IPv4, Priority: 32765, Table: 254, Suppress: 0}}}, def,
			[]Severity{Warning}, "wg-quick", 0, 0},
		{"a VPN's exact mark after wanpin's rules", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 32765, HasMark: true, Mark: 0x10, Mask: ^uint32(0), Table: 300, Suppress: -1}}}, def,
			[]Severity{Warning}, "", 0, 0},
		{"a source rule after wanpin's rules", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 20000, Table: 100, Suppress: -1}}}, def,
			[]Severity{Warning}, "", 0, 0},
		{"the main and default tables after wanpin's rules", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 32766, Table: 254, Suppress: -1},
			{Family: inet.IPv4, Priority: 32767, Table: 253, Suppress: -1}}}, def,
			nil, "", 0, 0},
		{"wg-quick before wanpin's rules", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 5209, HasMark: true, Mark: 51820, Mask: ^uint32(0), Invert: true, Table: 51820}}}, def,
			[]Severity{Warning}, "wg-quick", 0, 0},
		{"a copy of a foreign exact mark", Snapshot{Marks: []MarkUse{
			{Table: "ip wg-quick-wg0", Chain: "postmangle", CT: true, Sets: true, Whole: true, Bits: ^uint32(0), Guarded: true, OnlyMark: 51820}}}, def,
			nil, "", 0, 0},
		{"tailscale under its own mask", Snapshot{Rules: []Rule{
			{Family: inet.IPv4, Priority: 5210, HasMark: true, Mark: 0x80000, Mask: 0xff0000}}},
			Mine{Mask: 0x00ff0000, Priority: 10000, Block: 1000, Uplinks: 2},
			[]Severity{Breaking}, "tailscale", 0x7f000000, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Analyze(c.s, c.m)
			if len(r.Findings) != len(c.severity) {
				t.Fatalf("findings %v, want severities %v", r.Findings, c.severity)
			}
			for i, f := range r.Findings {
				if f.Severity != c.severity[i] {
					t.Errorf("finding %d: %v %s, want %v", i, f.Severity, f, c.severity[i])
				}
				if c.program != "" && f.Program != c.program {
					t.Errorf("program %q, want %q", f.Program, c.program)
				}
			}
			if c.freeMask != 0 && r.FreeMask != c.freeMask {
				t.Errorf("free mask %#x, want %#x", r.FreeMask, c.freeMask)
			}
			if r.FreePriority != c.freePrio {
				t.Errorf("free priority %d, want %d", r.FreePriority, c.freePrio)
			}
		})
	}
}
