package rules

import (
	"fmt"
	"strings"

	"github.com/google/nftables"

	"github.com/wanpin/wanpin/pkg/desired"
)

// NFTVersion is the nft whose listing Render reproduces: Debian 12's
// nftables 1.0.6. Other versions print some rules differently (element
// line breaks, the order of folded dependencies), so the kernel test that
// compares Render with `nft list` names the version when they disagree.
const NFTVersion = "v1.0.6"

// Render returns the table as `nft list table inet <name>` (nftables 1.0.6)
// prints it once Apply has loaded it, for `wanpin plan` and golden tests.
// It is deterministic and touches no kernel state. Two things only the
// kernel knows are left out: rule handles (nft prints none without -a)
// and the table's `flags owner,persist` line, which depends on the running
// kernel and on who holds the table, not on the Spec.
func Render(s desired.NFT) string { return build(s).render() }

// RenderKeep returns the companion table (KeepTable) as nft lists it,
// like Render. Apply loads it only where the main table is not owned.
func RenderKeep(s desired.NFT) string { return buildKeep(s).render() }

func (t *table) render() string {
	var items []string
	for _, s := range t.sets {
		items = append(items, s.render())
	}
	for _, c := range t.chains {
		items = append(items, c.render())
	}
	return "table inet " + t.name + " {\n" + strings.Join(items, "\n") + "}\n"
}

func (s *set) render() string {
	var b strings.Builder
	kind := "set"
	if s.isMap {
		kind = "map"
	}
	b.WriteString("\t" + kind + " " + s.name + " {\n")
	b.WriteString("\t\ttype " + s.typeText + "\n")
	if n := s.size(); n > 0 {
		fmt.Fprintf(&b, "\t\tsize %d\n", n)
	}
	switch {
	case s.interval:
		b.WriteString("\t\tflags interval\n")
	case s.dynamic:
		b.WriteString("\t\tflags dynamic,timeout\n")
		b.WriteString("\t\ttimeout " + nftDuration(s.timeout) + "\n")
	case s.learned:
		b.WriteString("\t\tflags timeout\n")
	}
	if len(s.elems) > 0 {
		b.WriteString("\t\telements = { ")
		perLine := elemsPerLine(s.key)
		count := 0
		for i, e := range s.elems {
			if i > 0 {
				// nft's calculate_delim: a few short keys per line, one
				// per line for everything else.
				if perLine > 0 && count < perLine {
					b.WriteString(", ")
				} else {
					count = 0
					b.WriteString(",\n\t\t\t     ")
				}
			}
			b.WriteString(e.text)
			count++
		}
		b.WriteString(" }\n")
	}
	b.WriteString("\t}\n")
	return b.String()
}

// elemsPerLine mirrors the type switch of nft 1.0.6's calculate_delim; 0
// means one element per line.
func elemsPerLine(t nftables.SetDatatype) int {
	switch t.GetNFTMagic() {
	case nftables.TypeNFProto.GetNFTMagic(), nftables.TypeInteger.GetNFTMagic(),
		nftables.TypeARPOp.GetNFTMagic(), nftables.TypeInetProto.GetNFTMagic(),
		nftables.TypeInetService.GetNFTMagic(), nftables.TypeTCPFlag.GetNFTMagic(),
		nftables.TypeDCCPPktType.GetNFTMagic(), nftables.TypeMark.GetNFTMagic(),
		nftables.TypeIFIndex.GetNFTMagic(), nftables.TypeClassID.GetNFTMagic(),
		nftables.TypeUID.GetNFTMagic(), nftables.TypeGID.GetNFTMagic(),
		nftables.TypeCTDir.GetNFTMagic():
		return 5
	case nftables.TypeIPAddr.GetNFTMagic(), nftables.TypeCTState.GetNFTMagic(),
		nftables.TypeCTStatus.GetNFTMagic(), nftables.TypePktType.GetNFTMagic():
		return 2
	}
	return 0
}

func (c *chain) render() string {
	var b strings.Builder
	b.WriteString("\tchain " + c.name + " {\n")
	if h := c.hook; h != nil {
		b.WriteString("\t\ttype " + string(h.typ) + " hook " + h.hookName +
			" priority " + h.prioName + "; policy accept;\n")
	}
	for _, r := range c.rules {
		b.WriteString("\t\t" + r.text + "\n")
	}
	b.WriteString("\t}\n")
	return b.String()
}
