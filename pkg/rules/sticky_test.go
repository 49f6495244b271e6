package rules

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
)

func TestNFTDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute:                     "10m",
		90 * time.Second:                     "1m30s",
		time.Hour:                            "1h",
		49*time.Hour + 1500*time.Millisecond: "2d1h1s500ms",
		0:                                    "0s",
	} {
		if got := nftDuration(d); got != want {
			t.Errorf("nftDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestStickySets(t *testing.T) {
	got := StickySets(goldenSpecs()["sticky"])
	var names []string
	for _, s := range got {
		names = append(names, s.Name+"/"+s.Policy+"/"+s.Uplink+"/"+s.Family.Label())
	}
	want := "st4_default_m1//wan1/ipv4 st6_default_m1//wan1/ipv6 st4_default_m2//wan2/ipv4 st6_default_m2//wan2/ipv6 " +
		"st4_bank_m1/bank/wan1/ipv4 st6_bank_m1/bank/wan1/ipv6 st4_bank_m2/bank/wan2/ipv4 st4_one_m2/one/wan2/ipv4 st6_one_m2/one/wan2/ipv6"
	if strings.Join(names, " ") != want {
		t.Errorf("sticky sets\n got %s\nwant %s", strings.Join(names, " "), want)
	}
	if got[4].Family != inet.IPv4 || !got[4].ByDestination || got[4].Timeout != 90*time.Second {
		t.Errorf("bank's set: %+v", got[4])
	}
}

var expiresRE = regexp.MustCompile(`expires ((?:\d+[dhms]+)+)`)

// elementExpires is what `nft list set` says an element has left, or
// false when the set does not hold it.
func elementExpires(tb testing.TB, ns *testNS, set, elem string) (time.Duration, bool) {
	tb.Helper()
	out, err := ns.nft("list", "set", "inet", "wanpin", set)
	if err != nil {
		return 0, false
	}
	i := strings.Index(out, elem+" ")
	if i < 0 {
		return 0, false
	}
	m := expiresRE.FindStringSubmatch(out[i:])
	if m == nil {
		tb.Fatalf("no expiry for %s in %s", elem, out)
	}
	s := strings.NewReplacer("d", "d ", "h", "h ", "ms", "ms ", "m", "m ", "s", "s ").Replace(m[1])
	var d time.Duration
	for _, f := range strings.Fields(s) {
		if strings.HasSuffix(f, "d") {
			v, _ := time.ParseDuration(strings.TrimSuffix(f, "d") + "h")
			d += 24 * v
			continue
		}
		v, err := time.ParseDuration(f)
		if err != nil {
			tb.Fatalf("parsing %q of %q: %v", f, m[1], err)
		}
		d += v
	}
	return d, true
}

// The datapath's memory survives an apply (a reload, a link event): the
// replaced table gets each entry back with the time it had left, while the
// set of an uplink that is no longer a candidate is gone with its entries.
func TestStickyCarriedOverApply(t *testing.T) {
	ns := newNS(t)
	// Not owned, so that nft may add the entries the datapath would.
	m := ns.manager(t, WithoutOwner())
	s := goldenSpecs()["sticky"]
	mustApply(t, m, s)
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.50 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.52 timeout 30s }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m2", "{ 192.0.2.51 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st6_default_m2", "{ 2001:db8::51 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_bank_m1", "{ 192.0.2.50 . 198.51.100.1 timeout 90s }")

	mustApply(t, m, s)
	for _, c := range []struct {
		set, elem string
		max       time.Duration
	}{
		{"st4_default_m1", "192.0.2.50", 10 * time.Minute},
		{"st4_default_m1", "192.0.2.52", 30 * time.Second},
		{"st4_default_m2", "192.0.2.51", 10 * time.Minute},
		{"st6_default_m2", "2001:db8::51", 10 * time.Minute},
		{"st4_bank_m1", "192.0.2.50 . 198.51.100.1", 90 * time.Second},
	} {
		left, ok := elementExpires(t, ns, c.set, c.elem)
		if !ok {
			t.Errorf("%s lost %s over an apply", c.set, c.elem)
			continue
		}
		// What it had left, not a fresh timeout and not nothing.
		if left > c.max || left < c.max-30*time.Second {
			t.Errorf("%s %s: %s left after the apply, want just under %s", c.set, c.elem, left, c.max)
		}
	}

	// Uplink 2 leaves the default balancing: its entries go, uplink 1's stay.
	one := s
	one.Default.V4.Buckets = one.Default.V4.Buckets[:1]
	one.Default.V6.Buckets = one.Default.V6.Buckets[:1]
	mustApply(t, m, one)
	if _, err := ns.nft("list", "set", "inet", "wanpin", "st4_default_m2"); err == nil {
		t.Errorf("st4_default_m2 still there with uplink 2 out of the default balancing")
	}
	if _, ok := elementExpires(t, ns, "st4_default_m1", "192.0.2.50"); !ok {
		t.Errorf("st4_default_m1 lost 192.0.2.50 when uplink 2 left")
	}
	// Back again: it starts empty.
	mustApply(t, m, s)
	if _, ok := elementExpires(t, ns, "st4_default_m2", "192.0.2.51"); ok {
		t.Errorf("uplink 2's old entry came back with it")
	}

	// sticky_by changes: the key changes, the memory starts afresh.
	byDst := s
	byDst.Policies = append([]desired.Policy(nil), s.Policies...)
	byDst.Policies[0].Balancer.Sticky.ByDestination = false
	mustApply(t, m, byDst)
	if out := ns.mustNft(t, "list", "set", "inet", "wanpin", "st4_bank_m1"); strings.Contains(out, "192.0.2.50") {
		t.Errorf("an entry of the old key survived a change of sticky_by:\n%s", out)
	}
}

func TestStickyEntries(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t, WithoutOwner())
	s := goldenSpecs()["sticky"]
	mustApply(t, m, s)
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st6_default_m2", "{ 2001:db8::51 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_bank_m1", "{ 192.0.2.50 . 198.51.100.1 timeout 90s }")
	got, err := m.StickyEntries(StickySets(s))
	if err != nil {
		t.Fatal(err)
	}
	if e := got["st6_default_m2"]; len(e) != 1 || e[0].Src != netip.MustParseAddr("2001:db8::51") || e[0].Dst.IsValid() || e[0].Left > 10*time.Minute || e[0].Left < 9*time.Minute {
		t.Errorf("st6_default_m2: %+v", e)
	}
	if e := got["st4_bank_m1"]; len(e) != 1 || e[0].Src != netip.MustParseAddr("192.0.2.50") || e[0].Dst != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("st4_bank_m1: %+v", e)
	}
	if len(got) != 2 {
		t.Errorf("entries in %d sets, want 2: %+v", len(got), got)
	}
}

// swappedMarks is the sticky spec without its policies (the default
// balancing alone), and the same with the two uplinks' marks swapped,
// as a reload that reorders them gives.
func swappedMarks() (before, after desired.NFT) {
	before = goldenSpecs()["sticky"]
	before.Policies = nil
	after = before
	after.Uplinks = twoUplinks()
	after.Uplinks[0].Mark, after.Uplinks[1].Mark = after.Uplinks[1].Mark, after.Uplinks[0].Mark
	return before, after
}

// A reload that gives the uplinks each other's marks keeps every
// remembered source on its uplink: the sets are named after the marks,
// and the entries follow the uplink, not the name.
func TestStickyFollowsUplinkAcrossMarks(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t, WithoutOwner())
	before, after := swappedMarks()
	mustApply(t, m, before)
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.50 timeout 10m }") // wan1
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m2", "{ 192.0.2.51 timeout 10m }") // wan2
	mustApply(t, m, after)
	for _, c := range []struct{ set, elem, other string }{
		{"st4_default_m2", "192.0.2.50", "st4_default_m1"}, // wan1 is m2 now
		{"st4_default_m1", "192.0.2.51", "st4_default_m2"},
	} {
		if _, ok := elementExpires(t, ns, c.set, c.elem); !ok {
			t.Errorf("%s (its uplink's set now) lacks %s after the marks were swapped", c.set, c.elem)
		}
		if _, ok := elementExpires(t, ns, c.other, c.elem); ok {
			t.Errorf("%s (the other uplink's set now) holds %s after the marks were swapped", c.other, c.elem)
		}
	}
}

// The same across a restart: the memory written at the stop goes back
// by uplink when the next start has the uplinks reordered.
func TestStickyMemoryFollowsUplinkAcrossMarks(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t, WithoutOwner())
	before, after := swappedMarks()
	mustApply(t, m, before)
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.50 timeout 10m }") // wan1
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m2", "{ 192.0.2.51 timeout 10m }") // wan2
	mem, err := m.Memory()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	m2 := ns.manager(t, WithoutOwner())
	m2.Seed(mem)
	mustApply(t, m2, after)
	for _, c := range []struct{ set, elem, other string }{
		{"st4_default_m2", "192.0.2.50", "st4_default_m1"},
		{"st4_default_m1", "192.0.2.51", "st4_default_m2"},
	} {
		if _, ok := elementExpires(t, ns, c.set, c.elem); !ok {
			t.Errorf("%s (its uplink's set now) lacks %s after a restart with the marks swapped", c.set, c.elem)
		}
		if _, ok := elementExpires(t, ns, c.other, c.elem); ok {
			t.Errorf("%s (the other uplink's set now) holds %s after a restart with the marks swapped", c.other, c.elem)
		}
	}
}
