package observe

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/nstest"
	. "github.com/wanpin/wanpin/pkg/neighbours"
)

// The neighbours' real rule shapes (docs/neighbours.md has the sources),
// installed in a namespace with ip, nft and iptables-nft, read back and
// judged against the old default mask and the new one.
func TestReadAndAnalyzeNeighbours(t *testing.T) {
	ns := nstest.New(t, "wpnb")
	for _, cmd := range [][]string{
		// Tailscale
		{"ip", "rule", "add", "pref", "5210", "fwmark", "0x80000/0xff0000", "table", "main"},
		{"ip", "rule", "add", "pref", "5230", "fwmark", "0x80000/0xff0000", "table", "default"},
		{"ip", "rule", "add", "pref", "5250", "fwmark", "0x80000/0xff0000", "unreachable"},
		{"ip", "rule", "add", "pref", "5270", "table", "52"},
		// wg-quick
		{"ip", "rule", "add", "not", "fwmark", "51820", "table", "51820"},
		{"ip", "rule", "add", "table", "main", "suppress_prefixlength", "0"},
		{"nft", "add table ip wg-quick-wg0; add chain ip wg-quick-wg0 premangle { type filter hook prerouting priority mangle; }; " +
			"add rule ip wg-quick-wg0 premangle meta l4proto udp meta mark set ct mark; " +
			"add chain ip wg-quick-wg0 postmangle { type filter hook postrouting priority mangle; }; " +
			"add rule ip wg-quick-wg0 postmangle meta l4proto udp meta mark 0x0000ca6c ct mark set meta mark"},
		// Tailscale's own firewall rules (nftables mode)
		{"nft", "add table ip ts-nat; add chain ip ts-nat ts-postrouting { type nat hook postrouting priority srcnat; }; " +
			"add rule ip ts-nat ts-postrouting meta mark & 0x00ff0000 == 0x00040000 masquerade"},
	} {
		ns.Run(t, cmd...)
	}
	if _, err := exec.LookPath("iptables-nft"); err == nil {
		for _, cmd := range [][]string{
			{"iptables-nft", "-t", "nat", "-N", "KUBE-MARK-MASQ"},
			{"iptables-nft", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", "0x4000"},
			{"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE"},
			{"iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-j", "CONNMARK", "--restore-mark"},
		} {
			ns.Run(t, cmd...)
		}
	}
	s, err := Read(ns.Handle, "wanpin", "wanpin_keep")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Unread) > 0 {
		t.Fatalf("unread as root: %v", s.Unread)
	}
	var texts []string
	for _, r := range s.Rules {
		texts = append(texts, r.Family.String()+" "+r.Text)
	}
	for _, m := range s.Marks {
		texts = append(texts, m.Table+" "+m.Chain+": "+m.Text)
	}
	t.Logf("read:\n%s", strings.Join(texts, "\n"))
	for _, want := range []string{
		"IPv4 5210: from all fwmark 0x80000/0xff0000 lookup main",
		"IPv4 5250: from all fwmark 0x80000/0xff0000 unreachable/prohibit/blackhole",
		"IPv4 5270: from all lookup 52",
		"ip wg-quick-wg0 premangle: meta mark set ct mark",
		"ip ts-nat ts-postrouting: meta mark & 0x00ff0000 == 0x00040000",
	} {
		if !slices.Contains(texts, want) {
			t.Errorf("not read: %q", want)
		}
	}

	old := Analyze(s, Mine{Mask: 0x00ff0000, Priority: 10000, Uplinks: 2})
	br := old.Breaking()
	var ids []string
	for _, f := range br {
		ids = append(ids, f.ID+" "+f.Program)
	}
	t.Logf("with 0x00ff0000:\n%s", old.Error())
	for _, want := range []string{"ip rule 5210 tailscale", "ip rule 5230 tailscale", "ip rule 5250 tailscale"} {
		if !slices.Contains(ids, want) {
			t.Errorf("with Tailscale's mask, %q not found breaking: %v", want, ids)
		}
	}
	if old.FreeMask != 0x7f000000 {
		t.Errorf("proposed mask %#x, want 0x7f000000", old.FreeMask)
	}
	now := Analyze(s, Mine{Mask: 0x7f000000, Priority: 10000, Uplinks: 2})
	if br := now.Breaking(); len(br) != 0 {
		t.Errorf("with the default mask: %v", br)
	}
	for _, f := range now.Findings {
		t.Logf("default mask: %s %s", f.Level, f)
	}
	// Allowed by program name, the clash no longer stops wanpin.
	if br := Analyze(s, Mine{Mask: 0x00ff0000, Priority: 10000, Uplinks: 2, Allow: []string{"tailscale"}}).Breaking(); len(br) != 0 {
		t.Errorf("allowed, still breaking: %v", br)
	}
}

// BenchmarkRead5000: what the once-a-second watch costs on a router with
// a Kubernetes node's worth of iptables rules (5,000 in one chain).
func BenchmarkRead5000(b *testing.B) {
	ns := nstest.New(b, "wpnbb")
	var rules strings.Builder
	rules.WriteString("*mangle\n:KUBE-BENCH - [0:0]\n")
	for i := range 5000 {
		fmt.Fprintf(&rules, "-A KUBE-BENCH -s 10.%d.%d.0/24 -j MARK --or-mark 0x4000\n", i>>8, i&255)
	}
	rules.WriteString("COMMIT\n")
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "iptables-nft-restore")
	cmd.Stdin = strings.NewReader(rules.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Skipf("iptables-nft-restore: %v %s", err, out)
	}
	for _, c := range []struct {
		name string
		rd   func() *Reader
	}{
		// A dump each time (start, reload, `wanpin check`).
		{"dump", func() *Reader { return &Reader{NS: ns.Handle} }},
		// The watch's Reader, nothing changed since its last dump.
		{"unchanged", func() *Reader { rd := &Reader{NS: ns.Handle}; rd.Read(); return rd }},
	} {
		b.Run(c.name, func(b *testing.B) {
			rd := c.rd()
			b.ResetTimer()
			for range b.N {
				if c.name == "dump" {
					rd = c.rd()
				}
				s, err := rd.Read()
				if err != nil || len(s.Marks) < 5000 {
					b.Fatalf("%v, %d mark uses", err, len(s.Marks))
				}
			}
		})
	}
}

// The watch's Reader dumps the nftables rules again only after a change.
func TestReaderDumpsOnChange(t *testing.T) {
	ns := nstest.New(t, "wpnbr")
	rd := &Reader{NS: ns.Handle}
	for range 3 {
		if _, err := rd.Read(); err != nil {
			t.Fatal(err)
		}
	}
	if rd.Dumps != 1 {
		t.Fatalf("%d dumps for 3 reads of an unchanged ruleset, want 1", rd.Dumps)
	}
	ns.Run(t, "nft", "add table ip other; add chain ip other c { type filter hook prerouting priority mangle; }; add rule ip other c meta mark set 0x1000000")
	s, err := rd.Read()
	if err != nil {
		t.Fatal(err)
	}
	if rd.Dumps != 2 || len(s.Marks) != 1 {
		t.Fatalf("after a change: %d dumps, %d mark uses; want 2 and 1", rd.Dumps, len(s.Marks))
	}
}
