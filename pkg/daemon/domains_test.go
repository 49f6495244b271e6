package daemon

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/dnslearn"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/rules"
)

type fakeLearned struct {
	added []rules.Learned
	err   error
}

func (f *fakeLearned) AddLearned(ls []rules.Learned) error {
	if f.err != nil {
		return f.err
	}
	f.added = append(f.added, ls...)
	return nil
}
func (f *fakeLearned) KeepDNSAlive(bool) error              { return nil }
func (f *fakeLearned) AppliedDomainSets() []rules.DomainSet { return nil }
func (f *fakeLearned) LearnedEntries([]rules.DomainSet) (map[string][]rules.LearnedEntry, error) {
	return nil, nil
}

// What an answer teaches goes to the sets of every policy whose domain
// it is under, of its family, for max(TTL, floor) capped at a day.
func TestDomainLearnerHandle(t *testing.T) {
	w := &fakeLearned{}
	l := newDomainLearner(w, slog.New(slog.DiscardHandler))
	r := &domainRoutes{by: map[string][]domainTarget{
		"example.com":     {{"p_a_dom4", inet.IPv4}, {"p_a_dom6", inet.IPv6}},
		"www.example.com": {{"p_b_dom4", inet.IPv4}},
	}, floor: time.Minute}
	l.routes.Store(r)
	a := netip.MustParseAddr
	l.handle([]dnslearn.Learned{
		{Domain: "www.example.com", Name: "x.www.example.com", Addr: a("203.0.113.1"), TTL: 5 * time.Second},
		{Domain: "example.com", Name: "tv.example.org", Addr: a("2001:db8::1"), TTL: 48 * time.Hour},
		{Domain: "example.org", Name: "other.example.org", Addr: a("203.0.113.2"), TTL: time.Hour},
		// The same address again for another domain on its chain that
		// leads to a set it went to already: added once.
		{Domain: "example.com", Name: "x.www.example.com", Addr: a("203.0.113.1"), TTL: 5 * time.Second},
	})
	var got []string
	for _, e := range w.added {
		got = append(got, e.Set+" "+e.Addr.String()+" "+e.Name+" "+e.Timeout.String())
	}
	want := []string{
		"p_b_dom4 203.0.113.1 x.www.example.com 1m0s",
		"p_a_dom4 203.0.113.1 x.www.example.com 1m0s",
		"p_a_dom6 2001:db8::1 tv.example.org " + config.MaxDomainTTL.String(),
	}
	if !slices.Equal(got, want) {
		t.Errorf("added\n%q\nwant\n%q", got, want)
	}
	if l.added.Load() != 3 {
		t.Errorf("added count %d", l.added.Load())
	}
	w.err = errors.New("set full")
	l.handle([]dnslearn.Learned{{Domain: "example.com", Name: "example.com", Addr: a("203.0.113.3"), TTL: time.Hour}})
	if l.addErrors.Load() != 1 {
		t.Errorf("add errors %d, want 1", l.addErrors.Load())
	}
}
