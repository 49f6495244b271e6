package dnslearn

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
)

func TestNewMatcherErrors(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", "empty domain name"},
		{".", "empty domain name"},
		{"a..b", "empty label"},
		{".example.com", "empty label"},
		{"*.example.com", "no wildcards"},
		{"-a.example.com", `label "-a" starts or ends with '-'`},
		{"a-.example.com", `label "a-" starts or ends with '-'`},
		{"ex ample.com", `has ' '`},
		{"exämple.com", "only letters, digits"},
		{strings.Repeat("a", 64) + ".com", "longer than 63"},
		{strings.Repeat("abcdefghi.", 26) + "com", "at most 253"},
	} {
		_, err := NewMatcher([]string{"ok.example", tc.in})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "domain 2") {
			t.Errorf("NewMatcher(%q) = %v, want an error about domain 2 with %q", tc.in, err, tc.want)
		}
	}
	if _, err := NewMatcher([]string{"Example.COM.", "_dmarc.example.com", "x-1.example", strings.Repeat("a", 63) + ".com"}); err != nil {
		t.Errorf("valid domains refused: %v", err)
	}
}

func TestMatch(t *testing.T) {
	m, err := NewMatcher([]string{"Example.COM.", "deep.sub.example.com", "example.net", "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != 3 {
		t.Errorf("Len = %d, want 3 (duplicates folded)", m.Len())
	}
	for _, tc := range []struct{ name, want string }{
		{"example.com", "example.com"},
		{"example.com.", "example.com"},
		{"WWW.Example.Com.", "example.com"},
		{"a.b.example.com", "example.com"},
		{"sub.example.com", "example.com"},
		{"deep.sub.example.com", "deep.sub.example.com"},
		{"x.deep.sub.example.com", "deep.sub.example.com"},
		{"cdn.example.net", "example.net"},
		{"example.org", ""},
		{"notexample.com", ""},
		{"com", ""},
		{"", ""},
		{".", ""},
		{"example.com.evil", ""},
	} {
		got, ok := m.Match(tc.name)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Match(%q) = %q, %v; want %q", tc.name, got, ok, tc.want)
		}
	}
	var nilM *Matcher
	if _, ok := nilM.Match("example.com"); ok {
		t.Error("a nil Matcher matched")
	}
}

func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{1, 10000} {
		domains := []string{"example.com"}
		for i := 1; i < n; i++ {
			domains = append(domains, fmt.Sprintf("d%d.example%d.org", i, i%97))
		}
		m, err := NewMatcher(domains)
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range []string{"a.b.c.www.example.com", "a.b.c.www.example.invalid"} {
			b.Run(fmt.Sprintf("domains=%d/%s", n, name), func(b *testing.B) {
				for b.Loop() {
					m.Match(name)
				}
			})
		}
	}
}

// rr is a record for msg: type A, AAAA or CNAME.
type rr struct {
	name string
	typ  string
	data string // address or target
	ttl  uint32
}

type msgOpt func(*dnsmessage.Header)

func query(h *dnsmessage.Header)     { h.Response = false }
func truncated(h *dnsmessage.Header) { h.Truncated = true }
func nxdomain(h *dnsmessage.Header)  { h.RCode = dnsmessage.RCodeNameError }

// msg builds a response to questions with answers.
func msg(t testing.TB, questions []string, answers []rr, opts ...msgOpt) []byte {
	t.Helper()
	h := dnsmessage.Header{ID: 7, Response: true, RecursionAvailable: true}
	for _, o := range opts {
		o(&h)
	}
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.StartQuestions())
	for _, q := range questions {
		must(b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(q + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}))
	}
	must(b.StartAnswers())
	for _, a := range answers {
		rh := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(a.name + "."), Class: dnsmessage.ClassINET, TTL: a.ttl}
		switch a.typ {
		case "A":
			must(b.AResource(rh, dnsmessage.AResource{A: netip.MustParseAddr(a.data).As4()}))
		case "AAAA":
			must(b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(a.data).As16()}))
		case "CNAME":
			must(b.CNAMEResource(rh, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(a.data + ".")}))
		case "TXT":
			must(b.TXTResource(rh, dnsmessage.TXTResource{TXT: []string{a.data}}))
		default:
			t.Fatalf("type %s", a.typ)
		}
	}
	out, err := b.Finish()
	must(err)
	return out
}

func l(domain, name, addr string, ttl int) Learned {
	return Learned{Domain: domain, Name: name, Addr: netip.MustParseAddr(addr), TTL: time.Duration(ttl) * time.Second}
}

func TestLearn(t *testing.T) {
	m, err := NewMatcher([]string{"example.com", "example.net", "deep.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	long := []rr{}
	for i := 0; i < MaxChain+1; i++ {
		long = append(long, rr{fmt.Sprintf("c%d.example.com", i), "CNAME", fmt.Sprintf("c%d.example.com", i+1), 60})
	}
	long = append(long, rr{fmt.Sprintf("c%d.example.com", MaxChain+1), "A", "203.0.113.99", 60})
	justLongEnough := append([]rr{}, long[1:]...)
	for _, tc := range []struct {
		name string
		msg  []byte
		want []Learned
	}{
		{"plain A", msg(t, []string{"example.com"}, []rr{{"example.com", "A", "203.0.113.10", 300}}),
			[]Learned{l("example.com", "example.com", "203.0.113.10", 300)}},
		{"AAAA", msg(t, []string{"www.example.com"}, []rr{{"www.example.com", "AAAA", "2001:db8::10", 30}}),
			[]Learned{l("example.com", "www.example.com", "2001:db8::10", 30)}},
		{"several addresses, mixed case", msg(t, []string{"WwW.Example.COM"}, []rr{
			{"www.example.com", "A", "203.0.113.10", 300},
			{"WWW.EXAMPLE.COM", "A", "203.0.113.11", 200},
			{"www.example.com", "AAAA", "2001:db8::10", 100},
		}), []Learned{
			l("example.com", "www.example.com", "203.0.113.10", 300),
			l("example.com", "www.example.com", "203.0.113.11", 200),
			l("example.com", "www.example.com", "2001:db8::10", 100),
		}},
		{"subdomain", msg(t, []string{"a.b.c.example.net"}, []rr{{"a.b.c.example.net", "A", "198.51.100.7", 60}}),
			[]Learned{l("example.net", "a.b.c.example.net", "198.51.100.7", 60)}},
		{"not a subdomain of a configured subdomain", msg(t, []string{"www.example.org"}, []rr{{"www.example.org", "A", "198.51.100.7", 60}}), nil},
		{"CNAME chain across domains, min TTL", msg(t, []string{"www.example.com"}, []rr{
			{"www.example.com", "CNAME", "cdn.example.net", 5},
			{"cdn.example.net", "CNAME", "edge.cdn.invalid", 600},
			{"edge.cdn.invalid", "A", "198.51.100.20", 300},
			{"edge.cdn.invalid", "AAAA", "2001:db8::20", 3},
		}), []Learned{
			// Both domains on the chain learn it: the first policy in
			// the file that has either steers.
			l("example.com", "www.example.com", "198.51.100.20", 5),
			l("example.com", "www.example.com", "2001:db8::20", 3),
			l("example.net", "www.example.com", "198.51.100.20", 5),
			l("example.net", "www.example.com", "2001:db8::20", 3),
		}},
		{"CNAME into a domain: every match on the chain", msg(t, []string{"shop.invalid"}, []rr{
			{"shop.invalid", "CNAME", "shop.deep.example.org", 100},
			{"shop.deep.example.org", "CNAME", "x.example.net", 100},
			{"x.example.net", "A", "198.51.100.30", 50},
		}), []Learned{l("deep.example.org", "shop.invalid", "198.51.100.30", 50), l("example.net", "shop.invalid", "198.51.100.30", 50)}},
		{"a domain met twice on the chain counts once", msg(t, []string{"a.example.com"}, []rr{
			{"a.example.com", "CNAME", "b.example.com", 100},
			{"b.example.com", "A", "198.51.100.31", 50},
		}), []Learned{l("example.com", "a.example.com", "198.51.100.31", 50)}},
		{"records off the chain are ignored", msg(t, []string{"www.example.com"}, []rr{
			{"www.example.com", "CNAME", "cdn.invalid", 100},
			{"other.invalid", "A", "198.51.100.66", 100},
			{"bank.example.com", "A", "198.51.100.67", 100},
			{"cdn.invalid", "A", "198.51.100.31", 100},
			{"cdn.invalid", "TXT", "hello", 100},
		}), []Learned{l("example.com", "www.example.com", "198.51.100.31", 100)}},
		{"addresses before the CNAME", msg(t, []string{"www.example.com"}, []rr{
			{"cdn.invalid", "A", "198.51.100.31", 100},
			{"www.example.com", "CNAME", "cdn.invalid", 10},
		}), []Learned{l("example.com", "www.example.com", "198.51.100.31", 10)}},
		{"duplicate address: the smaller TTL", msg(t, []string{"example.com"}, []rr{
			{"example.com", "A", "203.0.113.10", 300},
			{"example.com", "A", "203.0.113.10", 20},
		}), []Learned{l("example.com", "example.com", "203.0.113.10", 20)}},
		{"loop", msg(t, []string{"a.example.com"}, []rr{
			{"a.example.com", "CNAME", "b.example.com", 100},
			{"b.example.com", "CNAME", "a.example.com", 100},
			{"a.example.com", "A", "203.0.113.12", 100},
		}), nil},
		{"chain too long", msg(t, []string{"c0.example.com"}, long), nil},
		{"chain of MaxChain", msg(t, []string{"c1.example.com"}, justLongEnough),
			[]Learned{l("example.com", "c1.example.com", "203.0.113.99", 60)}},
		{"no match", msg(t, []string{"www.example.org"}, []rr{
			{"www.example.org", "CNAME", "cdn.invalid", 100},
			{"cdn.invalid", "A", "198.51.100.31", 100},
		}), nil},
		{"two questions", msg(t, []string{"a.example.com", "b.invalid"}, []rr{
			{"a.example.com", "A", "203.0.113.1", 10},
			{"b.invalid", "A", "203.0.113.2", 10},
		}), []Learned{l("example.com", "a.example.com", "203.0.113.1", 10)}},
		{"no answer", msg(t, []string{"example.com"}, nil), nil},
		{"a query", msg(t, []string{"example.com"}, []rr{{"example.com", "A", "203.0.113.10", 300}}, query), nil},
		{"truncated", msg(t, []string{"example.com"}, []rr{{"example.com", "A", "203.0.113.10", 300}}, truncated), nil},
		{"rcode", msg(t, []string{"example.com"}, []rr{{"example.com", "A", "203.0.113.10", 300}}, nxdomain), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Learn(tc.msg, m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Learn (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLearnErrors(t *testing.T) {
	m, _ := NewMatcher([]string{"example.com"})
	good := msg(t, []string{"example.com"}, []rr{{"example.com", "A", "203.0.113.10", 300}})
	for _, b := range [][]byte{nil, []byte("garbage"), good[:len(good)-2], good[:14]} {
		if got, err := Learn(b, m); err == nil {
			t.Errorf("Learn(%q) = %v, nil; want an error", b, got)
		}
	}
	if got, err := Learn(good, nil); err != nil || got != nil {
		t.Errorf("Learn with a nil Matcher = %v, %v; want nothing", got, err)
	}
}

func FuzzLearn(f *testing.F) {
	m, _ := NewMatcher([]string{"example.com"})
	f.Add(msg(f, []string{"www.example.com"}, []rr{
		{"www.example.com", "CNAME", "cdn.invalid", 5},
		{"cdn.invalid", "A", "198.51.100.20", 300},
	}))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Learn(b, m)
		for _, g := range got {
			if _, ok := m.Match(g.Domain); !ok || !g.Addr.IsValid() {
				t.Fatalf("bad %+v", g)
			}
		}
		_ = err
	})
}

// BenchmarkLearnDomains is what an answer costs the learner with one
// configured domain and with 10,000, measured side by side: interleaved
// rounds of the same answer (a CNAME and two addresses), the ratio taken
// per round, its median reported as ratio_10k/1. The kernel's share of
// a packet does not depend on the number of domains at all: they never
// reach the table (rules.TestDomainCountLeavesTableAlone).
//
//	go test -run XXX -bench LearnDomains ./pkg/dnslearn
func BenchmarkLearnDomains(b *testing.B) {
	many := []string{"example.com"}
	for i := 1; i < 10000; i++ {
		many = append(many, fmt.Sprintf("d%d.example%d.org", i, i%97))
	}
	one, _ := NewMatcher(many[:1])
	ten, _ := NewMatcher(many)
	answer := msg(b, []string{"www.example.com"}, []rr{
		{"www.example.com", "CNAME", "edge.example.com", 300},
		{"edge.example.com", "A", "203.0.113.10", 60},
		{"edge.example.com", "A", "203.0.113.11", 60},
	})
	const rounds, per = 11, 20000
	timeOf := func(m *Matcher) time.Duration {
		start := time.Now()
		for range per {
			if ls, err := Learn(answer, m); err != nil || len(ls) != 2 {
				b.Fatalf("learned %v, %v", ls, err)
			}
		}
		return time.Since(start)
	}
	for b.Loop() {
		var ratios []float64
		var t1, t10 time.Duration
		for r := range rounds {
			var a, c time.Duration
			if r%2 == 0 {
				a, c = timeOf(one), timeOf(ten)
			} else {
				c, a = timeOf(ten), timeOf(one)
			}
			t1, t10 = t1+a, t10+c
			ratios = append(ratios, float64(c)/float64(a))
		}
		slices.Sort(ratios)
		b.ReportMetric(ratios[len(ratios)/2], "ratio_10k/1")
		b.ReportMetric(float64(t1.Nanoseconds())/float64(rounds*per), "ns/answer_1")
		b.ReportMetric(float64(t10.Nanoseconds())/float64(rounds*per), "ns/answer_10k")
	}
}
