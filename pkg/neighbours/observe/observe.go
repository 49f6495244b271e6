// Package observe reads what other programs installed in a network
// namespace (ip rules, nftables and iptables-nft rules that use marks)
// into a neighbours.Snapshot.
package observe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/neighbours"
)

// wanpinProto tags wanpin's own ip rules (pkg/tables).
const wanpinProto = 119

// Read takes the snapshot of the network namespace ns (netns.None(): the
// caller's own), leaving out wanpin's own objects: rules tagged with its
// protocol and the nftables tables named in own. What it cannot read
// (nftables without CAP_NET_ADMIN) goes to Unread; only a failure to read
// the ip rules is an error.
func Read(ns netns.NsHandle, own ...string) (neighbours.Snapshot, error) {
	return (&Reader{NS: ns, Own: own}).Read()
}

// A Reader takes snapshots again and again (the daemon's watch, once a
// second), dumping the nftables rules only when the ruleset's generation
// changed since the last dump: on a Kubernetes node's 5,000 iptables
// rules a dump costs 62 ms (BenchmarkRead5000), the generation a single
// message. The ip rules, few, are read every time.
type Reader struct {
	NS  netns.NsHandle // netns.None(): the caller's own
	Own []string       // wanpin's own nftables tables, left out

	gen     uint32
	haveGen bool
	marks   []neighbours.MarkUse
	// Dumps counts the nftables dumps made (for tests).
	Dumps int
}

// Read is the snapshot now.
func (rd *Reader) Read() (neighbours.Snapshot, error) {
	ns, own := rd.NS, rd.Own
	var s neighbours.Snapshot
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return s, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	for _, f := range inet.Families {
		list, err := h.RuleList(f.AF())
		if err != nil {
			return s, fmt.Errorf("listing %v ip rules: %w", f, err)
		}
		for _, r := range list {
			if r.Protocol == wanpinProto || kernelRule(r) {
				continue
			}
			s.Rules = append(s.Rules, fromNetlink(f, r))
		}
	}
	gen, genErr := nftGen(ns)
	if genErr == nil && rd.haveGen && gen == rd.gen {
		s.Marks = rd.marks
		return s, nil
	}
	marks, err := readNFT(ns, own)
	rd.Dumps++
	if err != nil {
		why := err.Error()
		if errors.Is(err, unix.EPERM) || os.Geteuid() != 0 {
			why = "needs root (CAP_NET_ADMIN): " + why
		}
		s.Unread = append(s.Unread, "nftables rules: "+why)
		rd.haveGen = false
	} else {
		// The generation read before the dump: a commit in between makes
		// the next Read dump again.
		rd.gen, rd.haveGen, rd.marks = gen, genErr == nil, marks
	}
	s.Marks = marks
	return s, nil
}

// nftGen is the nftables ruleset's generation: every commit changes it.
func nftGen(ns netns.NsHandle) (uint32, error) {
	c, err := nftConn(ns)
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	g, err := c.GetGen()
	if err != nil {
		return 0, err
	}
	return g.ID, nil
}

func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	return nftables.New(opts...)
}

// kernelRule: the rules every router has (0 local, 32766 main, 32767
// default), and the ones the kernel adds for VRFs.
func kernelRule(r netlink.Rule) bool {
	hasMark := r.Mark != 0 || (r.Mask != nil && *r.Mask != 0)
	if hasMark || r.Src != nil || r.Dst != nil || r.IifName != "" || r.OifName != "" {
		return false
	}
	switch {
	case r.Priority == 0 && r.Table == unix.RT_TABLE_LOCAL,
		r.Priority == 32766 && r.Table == unix.RT_TABLE_MAIN,
		r.Priority == 32767 && r.Table == unix.RT_TABLE_DEFAULT:
		return true
	}
	return false
}

func fromNetlink(f inet.Family, r netlink.Rule) neighbours.Rule {
	out := neighbours.Rule{Family: f, Priority: r.Priority, Table: r.Table, Invert: r.Invert}
	if r.Mark != 0 || (r.Mask != nil && *r.Mask != 0) {
		out.HasMark, out.Mark, out.Mask = true, r.Mark, ^uint32(0)
		if r.Mask != nil {
			out.Mask = *r.Mask
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if out.Invert {
		b.WriteString(" not")
	}
	b.WriteString(" from ")
	if r.Src != nil {
		b.WriteString(r.Src.String())
	} else {
		b.WriteString("all")
	}
	if r.Dst != nil {
		b.WriteString(" to " + r.Dst.String())
	}
	if out.HasMark {
		fmt.Fprintf(&b, " fwmark %#x", out.Mark)
		if out.Mask != ^uint32(0) {
			fmt.Fprintf(&b, "/%#x", out.Mask)
		}
	}
	if r.IifName != "" {
		b.WriteString(" iif " + r.IifName)
	}
	if r.OifName != "" {
		b.WriteString(" oif " + r.OifName)
	}
	switch {
	case r.Type == unix.RTN_UNREACHABLE:
		b.WriteString(" unreachable")
	case r.Type == unix.RTN_BLACKHOLE:
		b.WriteString(" blackhole")
	case r.Type == unix.RTN_PROHIBIT:
		b.WriteString(" prohibit")
	case r.Table == unix.RT_TABLE_MAIN:
		b.WriteString(" lookup main")
	case r.Table == unix.RT_TABLE_DEFAULT:
		b.WriteString(" lookup default")
	case r.Table == unix.RT_TABLE_LOCAL:
		b.WriteString(" lookup local")
	case r.Table != 0:
		fmt.Fprintf(&b, " lookup %d", r.Table)
	default:
		// The library does not pass the rule's action on; a rule with
		// no table and no goto is one of these.
		b.WriteString(" unreachable/prohibit/blackhole")
	}
	out.Suppress = r.SuppressPrefixlen
	if r.SuppressPrefixlen >= 0 {
		fmt.Fprintf(&b, " suppress_prefixlength %d", r.SuppressPrefixlen)
	}
	if r.Type == unix.RTN_UNREACHABLE || r.Type == unix.RTN_BLACKHOLE || r.Type == unix.RTN_PROHIBIT {
		out.Table = 0 // no lookup
	}
	out.Text = b.String()
	return out
}

func readNFT(ns netns.NsHandle, own []string) ([]neighbours.MarkUse, error) {
	c, err := nftConn(ns)
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []neighbours.MarkUse
	for _, t := range tables {
		if isOwn(t, own) {
			continue
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name || ch.Table.Family != t.Family {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return out, fmt.Errorf("listing rules of %s %s: %w", tableName(t), ch.Name, err)
			}
			for _, r := range rules {
				uses := markUses(r.Exprs)
				// A rule that first tests for one exact packet mark
				// (wg-quick's `meta mark 0x0000ca6c ct mark set meta
				// mark`) only acts on packets carrying it.
				var guard *uint32
				for _, mu := range uses {
					if !mu.Sets && !mu.CT && mu.Exact {
						v := mu.Bits
						guard = &v
						break
					}
				}
				for _, mu := range uses {
					if mu.Sets && guard != nil {
						mu.OnlyMark, mu.Guarded = *guard, true
					}
					if ch.Hooknum != nil && ch.Priority != nil {
						mu.Hooked, mu.Hook, mu.Priority = true, uint32(*ch.Hooknum), int32(*ch.Priority)
					}
					mu.Table, mu.Chain, mu.Handle = tableName(t), ch.Name, r.Handle
					out = append(out, mu)
				}
			}
		}
	}
	return out, nil
}

func isOwn(t *nftables.Table, own []string) bool {
	if t.Family != nftables.TableFamilyINet {
		return false
	}
	for _, o := range own {
		if t.Name == o {
			return true
		}
	}
	return false
}

func tableName(t *nftables.Table) string {
	fam := map[nftables.TableFamily]string{
		nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
		nftables.TableFamilyARP: "arp", nftables.TableFamilyBridge: "bridge", nftables.TableFamilyNetdev: "netdev",
	}[t.Family]
	return fam + " " + t.Name
}

// reg is what a register holds, as far as marks go: a mark loaded, with
// the bits a bitwise kept (keep) and set (xor); or a constant.
type reg struct {
	kind      int // 0 other, 1 meta mark, 2 ct mark, 3 constant
	keep, xor uint32
	value     uint32
}

const (
	regOther = iota
	regMeta
	regCT
	regConst
)

// markUses reads a rule's expressions for what they do with marks: the
// native ones (what nft and iptables-nft's matches compile to) and the
// xtables MARK and CONNMARK targets iptables-nft leaves to the compat
// layer.
func markUses(exprs []expr.Any) []neighbours.MarkUse {
	regs := map[uint32]reg{}
	var out []neighbours.MarkUse
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key != expr.MetaKeyMARK {
				if !e.SourceRegister {
					regs[e.Register] = reg{}
				}
				continue
			}
			if !e.SourceRegister {
				regs[e.Register] = reg{kind: regMeta, keep: ^uint32(0)}
				continue
			}
			out = append(out, setFrom(false, regs[e.Register]))
		case *expr.Ct:
			if e.Key != expr.CtKeyMARK {
				if !e.SourceRegister {
					regs[e.Register] = reg{}
				}
				continue
			}
			if !e.SourceRegister {
				regs[e.Register] = reg{kind: regCT, keep: ^uint32(0)}
				continue
			}
			out = append(out, setFrom(true, regs[e.Register]))
		case *expr.Immediate:
			v := reg{kind: regConst}
			if len(e.Data) == 4 {
				v.value = binary.NativeEndian.Uint32(e.Data)
			}
			regs[e.Register] = v
		case *expr.Bitwise:
			src := regs[e.SourceRegister]
			if (src.kind == regMeta || src.kind == regCT) && len(e.Mask) == 4 && len(e.Xor) == 4 {
				mask, xor := binary.NativeEndian.Uint32(e.Mask), binary.NativeEndian.Uint32(e.Xor)
				src.keep &= mask
				src.xor = src.xor&mask ^ xor
				regs[e.DestRegister] = src
			} else {
				regs[e.DestRegister] = reg{}
			}
		case *expr.Cmp:
			if mu, ok := testOf(regs[e.Register], e.Data); ok {
				out = append(out, mu)
			}
		case *expr.Lookup:
			if mu, ok := testOf(regs[e.SourceRegister], nil); ok {
				out = append(out, mu)
			}
			if e.IsDestRegSet && e.DestRegister != 0 {
				regs[e.DestRegister] = reg{}
			}
		case *expr.Target:
			out = append(out, xtTarget(e)...)
		default:
			// Any other expression that writes a register makes it
			// unknown; the few that matter are handled above.
		}
	}
	return out
}

// setFrom is a mark set from a register's value.
func setFrom(ct bool, src reg) neighbours.MarkUse {
	mu := neighbours.MarkUse{CT: ct, Sets: true}
	which, from := "meta mark", "meta mark"
	if ct {
		which = "ct mark"
	}
	switch src.kind {
	case regMeta, regCT:
		if src.kind == regCT {
			from = "ct mark"
		}
		sameMark := (src.kind == regCT) == ct
		if sameMark {
			// mark = mark & keep ^ xor: the bits outside keep are
			// written, and those xor flips inside it.
			mu.Bits = ^src.keep | src.xor
			mu.Text = fmt.Sprintf("%s set %s & %#08x ^ %#08x", which, which, src.keep, src.xor)
			return mu
		}
		mu.Whole, mu.FromCT = true, src.kind == regCT
		mu.Bits = ^uint32(0)
		if src.keep == ^uint32(0) && src.xor == 0 {
			mu.Text = fmt.Sprintf("%s set %s", which, from)
		} else {
			mu.Text = fmt.Sprintf("%s set %s & %#08x ^ %#08x", which, from, src.keep, src.xor)
			mu.FromCT = mu.FromCT && src.xor == 0
		}
	case regConst:
		mu.Whole, mu.Bits = true, ^uint32(0)
		mu.Text = fmt.Sprintf("%s set %#x", which, src.value)
	default:
		mu.Whole, mu.Bits = true, ^uint32(0)
		mu.Text = which + " set (a computed value)"
	}
	return mu
}

// testOf: a comparison or lookup of a register holding a mark.
func testOf(src reg, data []byte) (neighbours.MarkUse, bool) {
	if src.kind != regMeta && src.kind != regCT {
		return neighbours.MarkUse{}, false
	}
	mu := neighbours.MarkUse{CT: src.kind == regCT, Bits: src.keep}
	which := "meta mark"
	if mu.CT {
		which = "ct mark"
	}
	mu.Text = which
	if src.keep != ^uint32(0) {
		mu.Text += fmt.Sprintf(" & %#08x", src.keep)
	}
	if len(data) == 4 {
		v := binary.NativeEndian.Uint32(data)
		mu.Text += fmt.Sprintf(" == %#08x", v)
		if src.keep == ^uint32(0) {
			// An exact value: only its bits matter for clashes.
			mu.Bits, mu.Exact = v, true
		}
	} else {
		mu.Text += " (looked up)"
	}
	return mu, true
}

// The xtables targets' payloads (linux/netfilter/xt_mark.h,
// xt_connmark.h), in host byte order.
func xtTarget(t *expr.Target) []neighbours.MarkUse {
	raw, ok := t.Info.(*xt.Unknown)
	if !ok || raw == nil {
		return nil
	}
	b := []byte(*raw)
	u32 := func(off int) uint32 {
		if len(b) < off+4 {
			return 0
		}
		return binary.NativeEndian.Uint32(b[off:])
	}
	switch t.Name {
	case "MARK":
		// xt_mark_tginfo2 {mark, mask}: mark = mark & ~mask ^ value.
		if len(b) < 8 {
			return nil
		}
		v, m := u32(0), u32(4)
		return []neighbours.MarkUse{{Sets: true, Bits: m | v, Whole: m == ^uint32(0), Text: fmt.Sprintf("MARK --set-xmark %#x/%#x", v, m)}}
	case "CONNMARK":
		// xt_connmark_tginfo1/2 {ctmark, ctmask, nfmask, (shift_dir,
		// shift_bits,) mode}.
		if len(b) < 13 {
			return nil
		}
		ctmark, ctmask, nfmask := u32(0), u32(4), u32(8)
		mode := b[12] // revision 1
		if t.Rev >= 2 {
			if len(b) < 15 {
				return nil
			}
			mode = b[14] // after shift_dir and shift_bits
		}
		switch mode {
		case 0: // --set-xmark
			return []neighbours.MarkUse{{CT: true, Sets: true, Bits: ctmask | ctmark, Whole: ctmask == ^uint32(0),
				Text: fmt.Sprintf("CONNMARK --set-xmark %#x/%#x", ctmark, ctmask)}}
		case 1: // --save-mark: ct = ct & ~ctmask ^ (mark & nfmask)
			return []neighbours.MarkUse{{CT: true, Sets: true, Bits: ctmask, Whole: ctmask == ^uint32(0),
				Text: fmt.Sprintf("CONNMARK --save-mark --nfmask %#x --ctmask %#x", nfmask, ctmask)}}
		case 2: // --restore-mark: mark = mark & ~nfmask ^ (ct & ctmask)
			return []neighbours.MarkUse{{Sets: true, Bits: nfmask, Whole: nfmask == ^uint32(0), FromCT: nfmask == ^uint32(0) && ctmask == ^uint32(0),
				Text: fmt.Sprintf("CONNMARK --restore-mark --nfmask %#x --ctmask %#x", nfmask, ctmask)}}
		}
	}
	return nil
}
