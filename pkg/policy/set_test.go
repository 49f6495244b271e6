package policy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wanpin/wanpin/pkg/inet"
)

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestPrefixIntervals(t *testing.T) {
	ps := pfx(
		"192.0.2.0/25", "192.0.2.128/25", // adjacent: merge into /24
		"198.51.100.10/32", "198.51.100.0/28", // contained
		"203.0.113.0/30", "203.0.113.4/31", // adjacent, not a prefix together
		"2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::5/128",
	)
	v4, v6 := prefixIntervals(ps, inet.IPv4), prefixIntervals(ps, inet.IPv6)
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
	all := pfx("0.0.0.0/0", "192.0.2.0/24", "::/0")
	all4, all6 := prefixIntervals(all, inet.IPv4), prefixIntervals(all, inet.IPv6)
	if len(all4) != 1 || addrIntervalText(all4[0], 4) != "0.0.0.0/0" || len(all6) != 1 || addrIntervalText(all6[0], 16) != "::/0" {
		t.Errorf("full ranges: %v %v", all4, all6)
	}
	// An interval up to the top has no end element: the kernel leaves it open.
	if e := intervalElems(all4, 4, portIntervalText); e[0].End != nil {
		t.Errorf("open interval got an end key %x", e[0].End)
	}
}

func TestPortIntervals(t *testing.T) {
	var got []string
	for _, e := range portElems([]PortRange{{443, 443}, {80, 80}, {81, 90}, {1000, 2000}, {1500, 1600}, {65535, 65535}}) {
		got = append(got, e.Text)
	}
	if d := cmp.Diff([]string{"80-90", "443", "1000-2000", "65535"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}
