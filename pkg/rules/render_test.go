package rules

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from Render")

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func twoUplinks() []Uplink {
	return []Uplink{
		{Name: "wan1", Interface: "eth1", Mark: 0x100, Masquerade: true, Addrs: addrs("192.0.2.10")},
		{Name: "wan2", Interface: "ppp0", Mark: 0x200, Addrs: addrs("198.51.100.20", "2001:db8:2::20")},
	}
}

// goldenSpecs are the representative Specs: the golden tests render them
// and the kernel tests load each into a namespace and compare what nft
// lists with the same golden text.
func goldenSpecs() map[string]Spec {
	return map[string]Spec{
		"two_up": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x100, Weight: 4}, {Mark: 0x200, Weight: 2}}}},
		},
		"one_down": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x100, Weight: 1}}}},
		},
		"all_matchers": {
			Table: "wanpin", Mask: 0x0f000000,
			Uplinks: []Uplink{
				{Name: "fiber", Interface: "enp1s0", Mark: 0x01000000, Masquerade: true},
				{Name: "lte", Interface: "wwan0", Mark: 0x02000000, Addrs: addrs("203.0.113.7")},
				{Name: "dsl-b", Interface: "ppp1", Mark: 0x03000000, Addrs: addrs("198.51.100.1", "198.51.100.2", "2001:db8:3::1")},
			},
			Default: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x01000000, Weight: 3}, {Mark: 0x02000000, Weight: 1}, {Mark: 0x03000000, Weight: 2}}}},
			Policies: []Policy{
				{Name: "voip", Sources: pfx("192.0.2.64/26", "2001:db8:10::/48"), InInterfaces: []string{"lan0", "br-guest", "lan0"},
					Destinations: pfx("198.51.100.0/25", "198.51.100.128/25", "203.0.113.5/32", "2001:db8:99::/64"),
					Protocol:     17, Ports: []PortRange{{5060, 5061}, {10000, 20000}, {5062, 5062}},
					Balancer: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x02000000, Weight: 1}}}}},
				{Name: "backup", UIDs: []uint32{34, 0, 1000}, GIDs: []uint32{100},
					Destinations: pfx("192.0.2.0/24"),
					Balancer:     Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x03000000, Weight: 10}, {Mark: 0x01000000, Weight: 5}}}}},
				{Name: "svc", Cgroups: []CgroupMatch{{Level: 2, ID: 9000001}, {Level: 3, ID: 9000003}, {Level: 2, ID: 9000002}},
					Ports:    []PortRange{{443, 443}, {80, 80}, {1024, 65535}},
					Balancer: Balancer{Choice: Choice{FallbackDefault: true}}},
				{Name: "gone", ServicesUnresolved: true, Balancer: Balancer{Choice: Choice{Reject: true}}},
				{Name: "web", Protocol: 6, Balancer: Balancer{}},
			},
		},
		"fallback_none_reject": {
			Table: "wanpin", Mask: 0xff,
			Uplinks: []Uplink{
				{Name: "a", Interface: "eth0", Mark: 1, Masquerade: true},
				{Name: "b", Interface: "eth1", Mark: 2, Masquerade: true},
			},
			Policies: []Policy{
				{Name: "strict", Destinations: pfx("203.0.113.0/24"), Balancer: Balancer{Choice: Choice{Reject: true}}},
			},
			Default: Balancer{Choice: Choice{Reject: true}},
		},
		"ipv6": {
			Table: "wanpin", Mask: 0xffffffff,
			Uplinks: []Uplink{
				{Name: "he", Interface: "sit1", Mark: 0x10, Addrs: addrs("2001:db8:1::2")},
				{Name: "isp", Interface: "eth0", Mark: 0x20, Masquerade: true, Addrs: addrs("2001:db8:2::2", "192.0.2.2")},
			},
			Policies: []Policy{
				{Name: "v6only", Sources: pfx("2001:db8:100::/56", "2001:db8:100:100::/56", "2001:db8:200::1/128"),
					Destinations: pfx("2001:db8::/32", "::/0"),
					Balancer:     Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x10, Weight: 1}, {Mark: 0x20, Weight: 1}}}}},
				{Name: "mixed", Destinations: pfx("0.0.0.0/0", "2001:db8:aaaa::/48", "2001:db8:aaaa:1::/64", "2001:db8:bbbb::/47"),
					Balancer: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x20, Weight: 1}}}}},
			},
			Default: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x20, Weight: 1}}}},
		},
		// Every IPv6 mode at once, and balancers whose families differ:
		// "lte" has no IPv6, "dsl" lost its IPv4.
		"dualstack": {
			Table: "wanpin", Mask: 0x00ff0000, LANPrefix6: pfx("2001:db8:1::/64")[0],
			Uplinks: []Uplink{
				{Name: "fibre", Interface: "eth1", Mark: 0x10000, Masquerade: true, NAT6: NAT6None,
					Prefix6: pfx("2001:db8:d1::/56")[0], Addrs: addrs("198.51.100.2", "2001:db8:101::2")},
				{Name: "dsl", Interface: "ppp0", Mark: 0x20000, Masquerade: true, NAT6: NAT6Prefix,
					Prefix6: pfx("2001:db8:d2:100::/64")[0], Addrs: addrs("2001:db8:102::2")},
				{Name: "lte", Interface: "wwan0", Mark: 0x30000, Masquerade: false, NAT6: NAT6None,
					Prefix6: pfx("2001:db8:d3::/60")[0], Addrs: addrs("203.0.113.7")},
			},
			Source6: []SourcePrefix{{Prefix: pfx("2001:db8:d1::/56")[0], Mark: 0x10000}},
			Policies: []Policy{
				{Name: "voip", Protocol: 17, Ports: []PortRange{{5060, 5061}},
					Balancer: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x30000, Weight: 1}}},
						V6: &Choice{Reject: true}}},
				{Name: "office", Destinations: pfx("203.0.113.0/24", "2001:db8:ff::/64"),
					Balancer: Balancer{Choice: Choice{Reject: true}, V6: &Choice{FallbackDefault: true}}},
				{Name: "bulk", Sources: pfx("192.0.2.20/32", "2001:db8:1::20/128"),
					Balancer: Balancer{Choice: Choice{}, V6: &Choice{Buckets: []Bucket{{Mark: 0x20000, Weight: 1}}}}},
			},
			Default: Balancer{Choice: Choice{Buckets: []Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x30000, Weight: 1}}},
				V6: &Choice{Buckets: []Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x20000, Weight: 1}}}},
		},
	}
}

func TestRenderGolden(t *testing.T) {
	for name, s := range goldenSpecs() {
		t.Run(name, func(t *testing.T) {
			if err := s.Validate(); err != nil {
				t.Fatalf("golden spec invalid: %v", err)
			}
			got := Render(s)
			if got != Render(s) {
				t.Fatal("Render is not deterministic")
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestRenderGolden -update)", err)
			}
			if d := cmp.Diff(string(want), got); d != "" {
				t.Errorf("Render mismatch (-golden +got):\n%s", d)
			}
		})
	}
}

func TestRenderNoCandidateRejects(t *testing.T) {
	s := goldenSpecs()["fallback_none_reject"]
	out := Render(s)
	for _, want := range []string{
		"\tchain pol_strict {\n\t\treject\n\t}\n",
		"\tchain bal_default_chain {\n\t\treject\n\t}\n",
		// Down uplinks keep their restore element (see layout.md).
		"0x00000001 : goto mark_a, 0x00000002 : goto mark_b",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
}
