package health

import (
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wanpin/wanpin/pkg/config"
)

func TestDNSAnswers(t *testing.T) {
	root := dnsmessage.MustNewName(".")
	q := dnsmessage.Question{Name: root, Type: dnsmessage.TypeNS, Class: dnsmessage.ClassINET}
	build := func(h dnsmessage.Header, qs ...dnsmessage.Question) []byte {
		b := dnsmessage.NewBuilder(nil, h)
		if err := b.StartQuestions(); err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if err := b.Question(q); err != nil {
				t.Fatal(err)
			}
		}
		msg, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	other := q
	other.Name = dnsmessage.MustNewName("example.net.")
	for _, c := range []struct {
		name string
		msg  []byte
		want bool
	}{
		{"answer", build(dnsmessage.Header{ID: 7, Response: true}, q), true},
		{"refused counts", build(dnsmessage.Header{ID: 7, Response: true, RCode: dnsmessage.RCodeRefused}, q), true},
		{"error without question", build(dnsmessage.Header{ID: 7, Response: true, RCode: dnsmessage.RCodeFormatError}), true},
		{"other id", build(dnsmessage.Header{ID: 8, Response: true}, q), false},
		{"a query", build(dnsmessage.Header{ID: 7}, q), false},
		{"other question", build(dnsmessage.Header{ID: 7, Response: true}, other), false},
		{"garbage", []byte{0, 7, 0x80}, false},
	} {
		if got := dnsAnswers(c.msg, 7, root); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// Targets come parsed from config; a hand-made Spec with a method or
// dns_name probes cannot use fails each probe with the reason instead of
// panicking or vanishing (the quorum still counts them).
func TestBadSpecFails(t *testing.T) {
	for name, mod := range map[string]func(*config.HealthConfig){
		"method":   func(c *config.HealthConfig) { c.Method = "smtp" },
		"dns_name": func(c *config.HealthConfig) { c.Method, c.DNSName = "dns", "a..b" },
	} {
		cfg := defaults()
		cfg.Targets = config.MustTargets("icmp", "203.0.113.1")
		mod(&cfg)
		ps := newProbeSet(Spec{Config: cfg}, nil)
		targets := ps.targets()
		if len(targets) != 1 || targets[0].Name != "203.0.113.1" {
			t.Fatalf("%s: %+v", name, targets)
		}
		if _, err := targets[0].Probe(t.Context()); err == nil {
			t.Errorf("%s: no error", name)
		}
		ps.close()
	}
}
