package rules

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPrefixIntervals(t *testing.T) {
	v4, v6 := prefixIntervals(pfx(
		"192.0.2.0/25", "192.0.2.128/25", // adjacent: merge into /24
		"198.51.100.10/32", "198.51.100.0/28", // contained
		"203.0.113.0/30", "203.0.113.4/31", // adjacent, not a prefix together
		"2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::5/128",
	))
	var got4, got6 []string
	for _, iv := range v4 {
		got4 = append(got4, addrIntervalText(iv, 4))
	}
	for _, iv := range v6 {
		got6 = append(got6, addrIntervalText(iv, 16))
	}
	if d := cmp.Diff([]string{"192.0.2.0/24", "198.51.100.0/28", "203.0.113.0-203.0.113.5"}, got4); d != "" {
		t.Errorf("v4 (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"2001:db8::/32"}, got6); d != "" {
		t.Errorf("v6 (-want +got):\n%s", d)
	}
	all4, all6 := prefixIntervals(pfx("0.0.0.0/0", "192.0.2.0/24", "::/0"))
	if len(all4) != 1 || addrIntervalText(all4[0], 4) != "0.0.0.0/0" || len(all6) != 1 || addrIntervalText(all6[0], 16) != "::/0" {
		t.Errorf("full ranges: %v %v", all4, all6)
	}
	// An interval up to the top has no end element: the kernel leaves it open.
	if e := intervalElems(all4, 4, portIntervalText); e[0].end != nil {
		t.Errorf("open interval got an end key %x", e[0].end)
	}
}

func TestPortIntervals(t *testing.T) {
	var got []string
	for _, iv := range portIntervals([]PortRange{{443, 443}, {80, 80}, {81, 90}, {1000, 2000}, {1500, 1600}, {65535, 65535}}) {
		got = append(got, portIntervalText(iv))
	}
	if d := cmp.Diff([]string{"80-90", "443", "1000-2000", "65535"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestBitwiseText(t *testing.T) {
	for _, c := range []struct {
		mask, xor uint32
		want      string
	}{
		{^uint32(0xff00), 0x100, " & 0xffff01ff | 0x00000100"},
		{^uint32(0x100), 0x100, " | 0x00000100"},
		{0xff00, 0, " & 0x0000ff00"},
	} {
		if got := bitwiseText(c.mask, c.xor); got != c.want {
			t.Errorf("bitwiseText(%#x, %#x) = %q, want %q", c.mask, c.xor, got, c.want)
		}
	}
}

func TestReducedWeights(t *testing.T) {
	w, sum := reducedWeights([]Bucket{{1, 40}, {2, 20}, {3, 60}})
	if d := cmp.Diff([]int{2, 1, 3}, w); d != "" || sum != 6 {
		t.Errorf("got %v sum %d", w, sum)
	}
	if _, sum := reducedWeights(nil); sum != 0 {
		t.Errorf("empty: sum %d", sum)
	}
}

func TestParseRelease(t *testing.T) {
	for rel, want := range map[string]bool{
		"6.18.44-fc-v509": true, "6.9.0": true, "6.8.12-amd64": false,
		"6.1.0-28-amd64": false, "7.0": true, "5.19.1": false, "garbage": false, "6.10rc1": true,
	} {
		if got := ownerPersistSupported(rel); got != want {
			t.Errorf("ownerPersistSupported(%q) = %v, want %v", rel, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	base := goldenSpecs()["all_matchers"]
	if err := base.Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, c := range map[string]struct {
		mod  func(*Spec)
		want string
	}{
		"mark outside mask": {func(s *Spec) { s.Uplinks[0].Mark = 0x10 }, "inside mask"},
		"zero mark":         {func(s *Spec) { s.Uplinks[0].Mark = 0 }, "non-zero"},
		"dup mark":          {func(s *Spec) { s.Uplinks[1].Mark = s.Uplinks[0].Mark }, "already used"},
		"dup iface":         {func(s *Spec) { s.Uplinks[1].Interface = s.Uplinks[0].Interface }, "already used"},
		"long iface":        {func(s *Spec) { s.Uplinks[0].Interface = "abcdefghijklmnop" }, "interface name"},
		"bad uplink name":   {func(s *Spec) { s.Uplinks[0].Name = "Fiber" }, "name must be"},
		"bad policy name":   {func(s *Spec) { s.Policies[0].Name = "a b" }, "name must be"},
		"long policy name":  {func(s *Spec) { s.Policies[0].Name = strings.Repeat("a", 32) }, "name must be"},
		"dup policy":        {func(s *Spec) { s.Policies[1].Name = s.Policies[0].Name }, "duplicate"},
		"unknown bucket":    {func(s *Spec) { s.Default.Buckets[0].Mark = 0x0f000000 }, "no uplink"},
		"zero weight":       {func(s *Spec) { s.Default.Buckets[0].Weight = 0 }, "weight"},
		"too many buckets":  {func(s *Spec) { s.Default.Buckets[0].Weight = 1009; s.Default.Buckets[1].Weight = 1013 }, "at most"},
		"reversed ports":    {func(s *Spec) { s.Policies[0].Ports[0] = PortRange{9, 1} }, "reversed"},
		"protocol":          {func(s *Spec) { s.Policies[0].Protocol = 1 }, "protocol"},
		"zero mask":         {func(s *Spec) { s.Mask = 0 }, "mask is zero"},
		"table name":        {func(s *Spec) { s.Table = "" }, "table name"},
		"default self":      {func(s *Spec) { s.Default = Balancer{Choice: Choice{FallbackDefault: true}} }, "itself"},
	} {
		t.Run(name, func(t *testing.T) {
			s := goldenSpecs()["all_matchers"]
			c.mod(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, c.want)
			}
		})
	}
}
