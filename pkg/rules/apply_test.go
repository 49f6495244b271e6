package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/policy"
)

func TestKernelMatchesRender(t *testing.T) {
	// Render copies one nft's listing; another version would differ in
	// its formatting, not in what the kernel holds. Say which.
	ver, _ := exec.Command(nftBin, "--version").Output()
	mismatch := ""
	if !strings.Contains(string(ver), NFTVersion+" ") {
		mismatch = fmt.Sprintf("\nRender reproduces nft %s; this machine has %q: a formatting difference is expected, see pkg/rules/layout.md",
			NFTVersion, strings.TrimSpace(string(ver)))
	}
	for name, s := range goldenSpecs() {
		t.Run(name, func(t *testing.T) {
			ns := newNS(t)
			m := ns.manager(t)
			if err := m.Apply(s); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			got := normalizeListing(ns.mustNft(t, "list", "table", "inet", s.Table))
			if d := cmp.Diff(Render(s), got); d != "" {
				t.Errorf("nft list differs from Render (-render +kernel):\n%s%s", d, mismatch)
			}
			if n := countTables(t, ns, KeepTable(s.Table)); n != 0 {
				t.Errorf("an owned table has %d companion tables, want none", n)
			}
			// Without the owner flag the companion comes with it.
			ns2 := newNS(t)
			m2 := ns2.manager(t, WithoutOwner())
			mustApply(t, m2, s)
			got = normalizeListing(ns2.mustNft(t, "list", "table", "inet", KeepTable(s.Table)))
			if d := cmp.Diff(RenderKeep(s), got); d != "" {
				t.Errorf("nft list of the companion differs from RenderKeep (-render +kernel):\n%s%s", d, mismatch)
			}
		})
	}
}

func mustApply(tb testing.TB, m *Manager, s desired.NFT) {
	tb.Helper()
	if err := m.Apply(s); err != nil {
		tb.Fatalf("Apply: %v", err)
	}
}

func countTables(tb testing.TB, ns *testNS, name string) int {
	tb.Helper()
	n := 0
	for _, l := range strings.Split(ns.mustNft(tb, "list", "tables"), "\n") {
		if strings.TrimSpace(l) == "table inet "+name {
			n++
		}
	}
	return n
}

func TestApplyTwiceIsOnce(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t)
	s := goldenSpecs()["all_matchers"]
	mustApply(t, m, s)
	first := ns.mustNft(t, "list", "table", "inet", "wanpin")
	mustApply(t, m, s)
	if n := countTables(t, ns, "wanpin"); n != 1 {
		t.Fatalf("%d tables inet wanpin after two Applies, want 1", n)
	}
	if second := ns.mustNft(t, "list", "table", "inet", "wanpin"); second != first {
		t.Errorf("second Apply changed the table:\n%s", cmp.Diff(first, second))
	}
	// A different spec replaces the table entirely.
	s2 := goldenSpecs()["two_up"]
	mustApply(t, m, s2)
	if got := normalizeListing(ns.mustNft(t, "list", "table", "inet", "wanpin")); got != Render(s2) {
		t.Errorf("after replacing spec:\n%s", cmp.Diff(Render(s2), got))
	}
}

func TestApplyLargeDestinationSet(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t)
	s := goldenSpecs()["two_up"]
	s.Policies = []desired.Policy{{Name: "big", Match: policy.Match{Destinations: manyPrefixes(10000)}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}})}}
	mustApply(t, m, s)
	got := normalizeListing(ns.mustNft(t, "list", "table", "inet", "wanpin"))
	if d := cmp.Diff(Render(s), got); d != "" {
		t.Errorf("10,000 prefixes: nft list differs from Render:\n%s", d)
	}
}

// manyPrefixes returns n disjoint, non-adjacent documentation prefixes
// (IPv6 host routes inside 2001:db8::/32, every other address, so they do
// not merge).
func manyPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for i := range n {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 15), 13: byte(i >> 7), 14: byte(i << 1)})
		out = append(out, netip.PrefixFrom(a, 128))
	}
	return out
}

func TestCanarySurvives(t *testing.T) {
	ns := newNS(t)
	canary := "table inet canary {\n\tchain c {\n\t\ttcp dport 9 drop\n\t}\n}\n"
	f := t.TempDir() + "/canary.nft"
	if err := os.WriteFile(f, []byte(canary), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.mustNft(t, "-f", f)
	m := ns.manager(t)
	mustApply(t, m, goldenSpecs()["all_matchers"])
	if got := ns.mustNft(t, "list", "table", "inet", "canary"); got != canary {
		t.Fatalf("canary changed by Apply:\n%s", got)
	}
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if got := ns.mustNft(t, "list", "table", "inet", "canary"); got != canary {
		t.Fatalf("canary changed by Remove:\n%s", got)
	}
	if n := countTables(t, ns, "wanpin"); n != 0 {
		t.Fatalf("table wanpin still there after Remove")
	}
	if ok, err := m.Present(); err != nil || ok {
		t.Fatalf("Present after Remove = %v, %v; want false, nil", ok, err)
	}
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove of an absent table: %v", err)
	}
}

func TestFailedApplyChangesNothing(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t)
	good := goldenSpecs()["two_up"]
	mustApply(t, m, good)
	before := ns.mustNft(t, "list", "ruleset")

	// Refused by validation, before the kernel sees anything.
	bad := goldenSpecs()["all_matchers"]
	bad.Uplinks[1].Mark = 0x10000000 // outside the mask
	if err := m.Apply(bad); err == nil {
		t.Fatal("Apply of a spec with a mark outside the mask succeeded")
	}
	// Refused by the kernel half way through the batch: everything before
	// the bad rule (the table delete included) must be rolled back.
	m.beforeFlush = func(c *nftables.Conn) {
		c.AddRule(&nftables.Rule{
			Table: &nftables.Table{Name: "wanpin", Family: nftables.TableFamilyINet},
			Chain: &nftables.Chain{Name: "prerouting"},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: "no_such_chain"}},
		})
	}
	err := m.Apply(goldenSpecs()["all_matchers"])
	m.beforeFlush = nil
	if err == nil {
		t.Fatal("Apply with a rule jumping to a missing chain succeeded")
	}
	if !strings.Contains(err.Error(), "replacing nftables table inet wanpin") {
		t.Errorf("error lacks context: %v", err)
	}
	if after := ns.mustNft(t, "list", "ruleset"); after != before {
		t.Fatalf("failed Apply changed the ruleset:\n%s", cmp.Diff(before, after))
	}
	// And the Manager still works afterwards.
	mustApply(t, m, goldenSpecs()["one_down"])
}

// TestOwnerPersist: the table is owned while the Manager lives, survives
// it, and a new Manager re-claims it without duplicates.
func TestOwnerPersist(t *testing.T) {
	rel, err := kernelRelease()
	if err != nil {
		t.Fatal(err)
	}
	if !ownerPersistSupported(rel) {
		t.Skipf("kernel %s has no NFT_TABLE_F_PERSIST", rel)
	}
	ns := newNS(t)
	s := goldenSpecs()["two_up"]
	m1, err := New(WithNetNS(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	if !m1.Owner() {
		t.Fatal("Manager on a >= 6.9 kernel does not use the owner flag")
	}
	mustApply(t, m1, s)
	if out, err := ns.nft("delete", "table", "inet", "wanpin"); err == nil {
		t.Fatalf("nft delete table succeeded on an owned table: %s", out)
	}
	if out, err := ns.nft("add", "rule", "inet", "wanpin", "prerouting", "accept"); err == nil {
		t.Fatalf("nft add rule succeeded on an owned table: %s", out)
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}

	// Orphaned but persistent: still there, unchanged.
	listing := ns.mustNft(t, "list", "table", "inet", "wanpin")
	if got := normalizeListing(listing); got != Render(s) {
		t.Fatalf("orphaned table differs:\n%s", cmp.Diff(Render(s), got))
	}
	if strings.Contains(listing, "flags owner") {
		t.Errorf("table still owned after Close:\n%s", listing)
	}

	m2 := ns.manager(t)
	if ok, err := m2.Present(); err != nil || !ok {
		t.Fatalf("Present = %v, %v; want true", ok, err)
	}
	mustApply(t, m2, s)
	if n := countTables(t, ns, "wanpin"); n != 1 {
		t.Fatalf("%d tables after re-claiming, want 1", n)
	}
	listing = ns.mustNft(t, "list", "table", "inet", "wanpin")
	if !strings.Contains(listing, "flags owner") {
		t.Errorf("re-claimed table is not owned:\n%s", listing)
	}
	if out, err := ns.nft("delete", "table", "inet", "wanpin"); err == nil {
		t.Fatalf("nft delete table succeeded on a re-claimed table: %s", out)
	}

	// A third Manager must not take the table from a live owner.
	m3 := ns.manager(t)
	err = m3.Apply(s)
	if err == nil {
		t.Fatal("Apply over a table owned by another live Manager succeeded")
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("want EPERM, got %v", err)
	}
	if err := m2.Remove(); err != nil {
		t.Fatalf("owner's Remove: %v", err)
	}
	if n := countTables(t, ns, "wanpin"); n != 0 {
		t.Fatal("table still there after Remove")
	}
}

// TestWithoutOwnerOverOrphan: a Manager without the owner flag can still
// replace a persistent orphan left by an owner Manager (and the reverse).
func TestWithoutOwnerOverOrphan(t *testing.T) {
	ns := newNS(t)
	s := goldenSpecs()["one_down"]
	m1, err := New(WithNetNS(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, m1, s)
	m1.Close()
	m2 := ns.manager(t, WithoutOwner())
	mustApply(t, m2, s)
	listing := ns.mustNft(t, "list", "table", "inet", "wanpin")
	if strings.Contains(listing, "\tflags") {
		t.Errorf("WithoutOwner table has flags:\n%s", listing)
	}
	if got := normalizeListing(listing); got != Render(s) {
		t.Errorf("listing differs:\n%s", cmp.Diff(Render(s), got))
	}
	m2.Close()
	// Plain table, not owned: an owner Manager takes it over.
	m3 := ns.manager(t)
	mustApply(t, m3, s)
	if n := countTables(t, ns, "wanpin"); n != 1 {
		t.Fatalf("%d tables, want 1", n)
	}
}

func BenchmarkApply(b *testing.B) {
	ns := newNS(b)
	m := ns.manager(b)
	s := desired.NFT{Table: "wanpin", Mask: 0xff00}
	for i := range 64 {
		s.Uplinks = append(s.Uplinks, desired.Uplink{Name: fmt.Sprintf("wan%d", i), Interface: fmt.Sprintf("eth%d", i),
			Mark: uint32(i+1) << 8, Masquerade: i%2 == 0,
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})}})
		s.Default.V4.Buckets = append(s.Default.V4.Buckets, desired.Bucket{Mark: uint32(i+1) << 8, Weight: 1 + i%3})
	}
	s.Default.V6 = s.Default.V4
	s.Policies = []desired.Policy{{Name: "big", Match: policy.Match{Destinations: manyPrefixes(10000)}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}})}}
	mustApply(b, m, s)
	b.ResetTimer()
	for b.Loop() {
		if err := m.Apply(s); err != nil {
			b.Fatal(err)
		}
	}
}

// A firewall reload (`nft flush ruleset`) on a kernel without the owner
// flag deletes wanpin's table: the deletion is reported at once, the
// owned companion table survives it whole (pins, NAT, and with them
// conntrack and the NAT hooks), and Apply puts the table back.
func TestFlushRulesetWithoutOwner(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t, WithoutOwner())
	s := goldenSpecs()["two_up"]
	mustApply(t, m, s)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	deleted := m.WatchDeletions(ctx, slog.New(slog.DiscardHandler))
	before := time.Now()
	ns.mustNft(t, "flush", "ruleset")
	select {
	case at := <-deleted:
		if at.Sub(before) > time.Second {
			t.Errorf("deletion reported after %v", at.Sub(before))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the deletion was not reported")
	}
	missing, err := m.Missing()
	if err != nil || len(missing) != 1 || missing[0] != "inet wanpin" {
		t.Fatalf("missing after flush ruleset: %v %v (the companion must survive)", missing, err)
	}
	if got := normalizeListing(ns.mustNft(t, "list", "table", "inet", KeepTable("wanpin"))); got != RenderKeep(s) {
		t.Errorf("the companion after the flush:\n%s", cmp.Diff(RenderKeep(s), got))
	}
	// With no table of wanpin's own the namespace still tracks
	// connections: a ping over loopback gets a conntrack entry (without
	// it, replies to a NATed connection would not be translated back).
	ns.Run(t, "ip", "link", "set", "lo", "up")
	ns.Run(t, "ping", "-c1", "-W1", "127.0.0.1")
	if out, _ := ns.Try("conntrack", "-L", "-p", "icmp"); !strings.Contains(out, "src=127.0.0.1") {
		t.Errorf("no conntrack entry for a ping once wanpin's table is gone:\n%s", out)
	}
	mustApply(t, m, s)
	if missing, _ := m.Missing(); len(missing) != 0 {
		t.Errorf("still missing after Apply: %v", missing)
	}
	if got := normalizeListing(ns.mustNft(t, "list", "table", "inet", "wanpin")); got != Render(s) {
		t.Errorf("after the repair:\n%s", cmp.Diff(Render(s), got))
	}
	if out := ns.mustNft(t, "list", "table", "inet", KeepTable("wanpin")); !strings.Contains(out, "flags owner") {
		t.Errorf("the companion table is not owned:\n%s", out)
	}
	if n := countTables(t, ns, KeepTable("wanpin")); n != 1 {
		t.Errorf("%d companion tables after the repair, want 1", n)
	}
}

// An earlier wanpin's companions are cleaned up by the first Apply: the
// empty nat-hooks table of older versions, and a KeepTable that an owned
// table does not need.
func TestStaleCompanionsRemoved(t *testing.T) {
	ns := newNS(t)
	ns.mustNft(t, "add", "table", "inet", "wanpin_nat_hooks")
	ns.mustNft(t, "add", "chain", "inet", "wanpin_nat_hooks", "keep", "{ type nat hook postrouting priority srcnat; policy accept; }")
	ns.mustNft(t, "add", "table", "inet", KeepTable("wanpin"))
	m := ns.manager(t)
	if !m.Owner() {
		t.Skip("the kernel has no owner flag with persist")
	}
	mustApply(t, m, goldenSpecs()["two_up"])
	for _, name := range []string{"wanpin_nat_hooks", KeepTable("wanpin")} {
		if n := countTables(t, ns, name); n != 0 {
			t.Errorf("table %s still there after Apply", name)
		}
	}
	if n := countTables(t, ns, "wanpin"); n != 1 {
		t.Errorf("%d wanpin tables, want 1", n)
	}
}
