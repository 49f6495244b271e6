package rules

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/desired"
)

// TestMemoryAcrossRemove: what the sticky and learned sets hold is taken
// before a Remove and comes back with the next Manager's first Apply,
// each entry with what it had left less the time away, its comment
// kept, a source+destination key as well; dns_alive stays the
// learner's; a key that changed, an expired entry and a table the kernel
// still has leave the seed unused.
func TestMemoryAcrossRemove(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t, WithoutOwner())
	s := goldenSpecs()["sticky"]
	dom := goldenSpecs()["domains"]
	s.Policies = append(s.Policies, dom.Policies...)
	s.DNSHold = dom.DNSHold
	mustApply(t, m, s)
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.50 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.52 timeout 2s }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st6_default_m2", "{ 2001:db8::51 timeout 10m }")
	ns.mustNft(t, "add", "element", "inet", "wanpin", "st4_bank_m1", "{ 192.0.2.50 . 198.51.100.1 timeout 90s }")
	if err := m.AddLearned([]Learned{{Set: "p_tv_dom4", Addr: netip.MustParseAddr("203.0.113.10"), Name: "www.example.com", Timeout: 10 * time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if err := m.KeepDNSAlive(true); err != nil {
		t.Fatal(err)
	}

	mem, err := m.Memory()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mem.Sets[setDNSAlive]; ok || mem.Len() != 5 {
		t.Fatalf("Memory: %d entries in %d sets (dns_alive taken: %v), want 5 and not dns_alive: %+v", mem.Len(), len(mem.Sets), ok, mem.Sets)
	}
	// Written down and read back, as the daemon does.
	b, err := json.Marshal(mem)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	var back Memory
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	// Away for 3 s: the 2 s entry has run out.
	back.Taken = back.Taken.Add(-3 * time.Second)

	// Had the bank policy come to stick by source alone, its set's key
	// would have changed and its entry would stay out.
	byDst := s
	byDst.Policies = append([]desired.Policy(nil), s.Policies...)
	byDst.Policies[0].Balancer.Sticky.ByDestination = false
	if es := back.elements(build(byDst), time.Now()); es["st4_bank_m1"] != nil || es["st4_default_m1"] == nil {
		t.Errorf("seed for a changed key: %v", es)
	}

	m2 := ns.manager(t, WithoutOwner())
	m2.Seed(back)
	mustApply(t, m2, s)
	for _, c := range []struct {
		set, elem string
		max       time.Duration
	}{
		{"st4_default_m1", "192.0.2.50", 10*time.Minute - 3*time.Second},
		{"st6_default_m2", "2001:db8::51", 10*time.Minute - 3*time.Second},
		{"p_tv_dom4", "203.0.113.10", 10*time.Minute - 3*time.Second},
		{"st4_bank_m1", "192.0.2.50 . 198.51.100.1", 90*time.Second - 3*time.Second},
	} {
		left, ok := elementExpires(t, ns, c.set, c.elem)
		if !ok {
			t.Errorf("%s: %s did not come back", c.set, c.elem)
			continue
		}
		if left > c.max || left < c.max-30*time.Second {
			t.Errorf("%s %s: %s left, want just under %s", c.set, c.elem, left, c.max)
		}
	}
	if out := ns.mustNft(t, "list", "set", "inet", "wanpin", "p_tv_dom4"); !strings.Contains(out, `comment "www.example.com"`) {
		t.Errorf("the learned address lost its name:\n%s", out)
	}
	if _, ok := elementExpires(t, ns, "st4_default_m1", "192.0.2.52"); ok {
		t.Errorf("an entry that ran out while away came back")
	}
	if out := ns.mustNft(t, "list", "set", "inet", "wanpin", setDNSAlive); strings.Contains(out, "udp") {
		t.Errorf("dns_alive came back from the memory, before any learner listens:\n%s", out)
	}

	// Used once: the next apply carries what the kernel holds, and a
	// seed given while the kernel has the table is ignored.
	ns.mustNft(t, "delete", "element", "inet", "wanpin", "st4_default_m1", "{ 192.0.2.50 }")
	m2.Seed(back)
	mustApply(t, m2, s)
	if _, ok := elementExpires(t, ns, "st4_default_m1", "192.0.2.50"); ok {
		t.Errorf("a seed was used although the kernel had the table")
	}
}
