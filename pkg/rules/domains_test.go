package rules

import (
	"fmt"

	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/wanpin/wanpin/pkg/desired"

	"github.com/wanpin/wanpin/pkg/inet"
)

func TestDomainSets(t *testing.T) {
	got := DomainSets(goldenSpecs()["domains"])
	want := []DomainSet{
		{Name: "p_tv_dom4", Policy: "tv", Family: inet.IPv4, Domains: []string{"example.com", "video.example.net"}},
		{Name: "p_tv_dom6", Policy: "tv", Family: inet.IPv6, Domains: []string{"example.com", "video.example.net"}},
		{Name: "p_kids_dom4", Policy: "kids", Family: inet.IPv4, Domains: []string{"example.org"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Policy != want[i].Policy || got[i].Family != want[i].Family ||
			strings.Join(got[i].Domains, ",") != strings.Join(want[i].Domains, ",") {
			t.Errorf("set %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// The daemon's writes on an owned table: learned addresses with their
// names and timeouts, kept over applies with the time they have left;
// dns_alive refreshed and cleared; a set that is gone refuses.
func TestLearnedAddresses(t *testing.T) {
	ns := newNS(t)
	m := ns.manager(t)
	s := goldenSpecs()["domains"]
	mustApply(t, m, s)
	if got := m.AppliedDomainSets(); len(got) != 3 || got[2].Name != "p_kids_dom4" {
		t.Errorf("AppliedDomainSets: %+v", got)
	}
	a := netip.MustParseAddr
	if err := m.AddLearned([]Learned{
		{Set: "p_tv_dom4", Addr: a("203.0.113.10"), Name: "www.example.com", Timeout: 10 * time.Minute},
		{Set: "p_tv_dom4", Addr: a("203.0.113.11"), Name: "cdn.video.example.net", Timeout: 30 * time.Second},
		{Set: "p_tv_dom6", Addr: a("2001:db8:20::20"), Name: "www.example.com", Timeout: 10 * time.Minute},
	}); err != nil {
		t.Fatal(err)
	}
	// Refreshed again and again (the kernel counts a re-added element
	// against the set's size before it finds it there).
	for range 3 {
		if err := m.KeepDNSAlive(true); err != nil {
			t.Fatal(err)
		}
	}
	out := ns.mustNft(t, "list", "set", "inet", "wanpin", "p_tv_dom4")
	if !strings.Contains(out, `203.0.113.10 timeout 10m expires`) || !strings.Contains(out, `comment "www.example.com"`) {
		t.Errorf("p_tv_dom4:\n%s", out)
	}
	// Learned again with a new TTL: the expiry follows the newest answer.
	if err := m.AddLearned([]Learned{{Set: "p_tv_dom4", Addr: a("203.0.113.11"), Name: "cdn.video.example.net", Timeout: 5 * time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if left, ok := elementExpires(t, ns, "p_tv_dom4", "203.0.113.11"); !ok || left < 4*time.Minute {
		t.Errorf("re-learned 203.0.113.11: %s left (present %v), want the new 5m", left, ok)
	}

	mustApply(t, m, s)
	es, err := m.LearnedEntries(DomainSets(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := es["p_tv_dom4"]; len(got) != 2 || es["p_tv_dom6"][0].Name != "www.example.com" {
		t.Errorf("after an apply: %+v", es)
	}
	for _, e := range es["p_tv_dom4"] {
		if e.Addr == a("203.0.113.10") && (e.Left > 10*time.Minute || e.Left < 9*time.Minute || e.Name != "www.example.com") {
			t.Errorf("carried over: %+v, want just under 10m and its name", e)
		}
	}
	if out := ns.mustNft(t, "list", "set", "inet", "wanpin", "dns_alive"); !strings.Contains(out, "udp") || !strings.Contains(out, "tcp") {
		t.Errorf("dns_alive lost over an apply:\n%s", out)
	}
	if err := m.KeepDNSAlive(false); err != nil {
		t.Fatal(err)
	}
	if out := ns.mustNft(t, "list", "set", "inet", "wanpin", "dns_alive"); strings.Contains(out, "udp") {
		t.Errorf("dns_alive still holds udp:\n%s", out)
	}

	// The policy goes: its sets with it; adding to them fails.
	s.Policies = s.Policies[1:]
	mustApply(t, m, s)
	if err := m.AddLearned([]Learned{{Set: "p_tv_dom4", Addr: a("203.0.113.10"), Timeout: time.Minute}}); err == nil {
		t.Error("added to a set that is gone")
	}
	// ...and the connection still works for the next batch.
	if err := m.AddLearned([]Learned{{Set: "p_kids_dom4", Addr: a("203.0.113.12"), Name: "example.org", Timeout: time.Minute}}); err != nil {
		t.Fatal(err)
	}
}

// A packet's cost in the kernel cannot depend on the number of domains:
// they never reach the table, which is the same for one domain and for
// 10,000 (each policy looks up its learned set once per family).
func TestDomainCountLeavesTableAlone(t *testing.T) {
	s := goldenSpecs()["domains"]
	one := Render(s)
	many := []string{"example.com"}
	for i := 1; i < 10000; i++ {
		many = append(many, fmt.Sprintf("d%d.example%d.org", i, i%97))
	}
	s.Policies = append([]desired.Policy(nil), s.Policies...)
	s.Policies[0].Match.Domains = many
	if got := Render(s); got != one {
		t.Errorf("10,000 domains changed the table:\n%s", cmp.Diff(one, got))
	}
}
