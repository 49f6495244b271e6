package rules

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/policy"
)

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
	w, sum := reducedWeights([]desired.Bucket{{Mark: 1, Weight: 40}, {Mark: 2, Weight: 20}, {Mark: 3, Weight: 60}})
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
	if err := Validate(base); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, c := range map[string]struct {
		mod  func(*desired.NFT)
		want string
	}{
		"mark outside mask": {func(s *desired.NFT) { s.Uplinks[0].Mark = 0x10 }, "inside mask"},
		"zero mark":         {func(s *desired.NFT) { s.Uplinks[0].Mark = 0 }, "non-zero"},
		"dup mark":          {func(s *desired.NFT) { s.Uplinks[1].Mark = s.Uplinks[0].Mark }, "already used"},
		"dup iface":         {func(s *desired.NFT) { s.Uplinks[1].Interface = s.Uplinks[0].Interface }, "already used"},
		"long iface":        {func(s *desired.NFT) { s.Uplinks[0].Interface = "abcdefghijklmnop" }, "interface name"},
		"bad uplink name":   {func(s *desired.NFT) { s.Uplinks[0].Name = "Fiber" }, "name must be"},
		"bad policy name":   {func(s *desired.NFT) { s.Policies[0].Name = "a b" }, "name must be"},
		"long policy name":  {func(s *desired.NFT) { s.Policies[0].Name = strings.Repeat("a", 32) }, "name must be"},
		"dup policy":        {func(s *desired.NFT) { s.Policies[1].Name = s.Policies[0].Name }, "duplicate"},
		"unknown bucket":    {func(s *desired.NFT) { s.Default.V4.Buckets[0].Mark = 0x0f000000 }, "no uplink"},
		"zero weight":       {func(s *desired.NFT) { s.Default.V4.Buckets[0].Weight = 0 }, "weight"},
		"too many buckets":  {func(s *desired.NFT) { s.Default.V4.Buckets[0].Weight = 1009; s.Default.V4.Buckets[1].Weight = 1013 }, "at most"},
		"reversed ports":    {func(s *desired.NFT) { s.Policies[0].Match.Ports[0] = policy.PortRange{First: 9, Last: 1} }, "reversed"},
		"protocol":          {func(s *desired.NFT) { s.Policies[0].Match.Protocol = 1 }, "protocol"},
		"zero mask":         {func(s *desired.NFT) { s.Mask = 0 }, "mask is zero"},
		"table name":        {func(s *desired.NFT) { s.Table = "" }, "table name"},
		"default self":      {func(s *desired.NFT) { s.Default = desired.Both(desired.Choice{FallbackDefault: true}) }, "itself"},
	} {
		t.Run(name, func(t *testing.T) {
			s := goldenSpecs()["all_matchers"]
			c.mod(&s)
			err := Validate(s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, c.want)
			}
		})
	}
}
