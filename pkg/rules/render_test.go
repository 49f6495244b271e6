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
		{Name: "wan1", Interface: "eth1", Mark: 0x100, Up: true, Masquerade: true, Addrs: addrs("192.0.2.10")},
		{Name: "wan2", Interface: "ppp0", Mark: 0x200, Up: true, Addrs: addrs("198.51.100.20", "2001:db8:2::20")},
	}
}

// goldenSpecs are the representative Specs: the golden tests render them
// and the kernel tests load each into a namespace and compare what nft
// lists with the same golden text.
func goldenSpecs() map[string]Spec {
	down := twoUplinks()
	down[1].Up = false
	return map[string]Spec{
		"two_up": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: Balancer{Buckets: []Bucket{{Mark: 0x100, Weight: 4}, {Mark: 0x200, Weight: 2}}},
		},
		"one_down": {
			Table: "wanpin", Mask: 0xff00, Uplinks: down,
			Default: Balancer{Buckets: []Bucket{{Mark: 0x100, Weight: 1}}},
		},
		"all_matchers": {
			Table: "wanpin", Mask: 0x0f000000,
			Uplinks: []Uplink{
				{Name: "fiber", Interface: "enp1s0", Mark: 0x01000000, Up: true, Masquerade: true},
				{Name: "lte", Interface: "wwan0", Mark: 0x02000000, Up: true, Addrs: addrs("203.0.113.7")},
				{Name: "dsl-b", Interface: "ppp1", Mark: 0x03000000, Up: true, Addrs: addrs("198.51.100.1", "198.51.100.2", "2001:db8:3::1")},
			},
			Default: Balancer{Buckets: []Bucket{{Mark: 0x01000000, Weight: 3}, {Mark: 0x02000000, Weight: 1}, {Mark: 0x03000000, Weight: 2}}},
			Policies: []Policy{
				{Name: "voip", Sources: pfx("192.0.2.64/26", "2001:db8:10::/48"), InInterfaces: []string{"lan0", "br-guest", "lan0"},
					Destinations: pfx("198.51.100.0/25", "198.51.100.128/25", "203.0.113.5/32", "2001:db8:99::/64"),
					Protocol:     17, Ports: []PortRange{{5060, 5061}, {10000, 20000}, {5062, 5062}},
					Balancer: Balancer{Buckets: []Bucket{{Mark: 0x02000000, Weight: 1}}}},
				{Name: "backup", UIDs: []uint32{34, 0, 1000}, GIDs: []uint32{100},
					Destinations: pfx("192.0.2.0/24"),
					Balancer:     Balancer{Buckets: []Bucket{{Mark: 0x03000000, Weight: 10}, {Mark: 0x01000000, Weight: 5}}}},
				{Name: "svc", Cgroups: []CgroupMatch{{Level: 2, ID: 9000001}, {Level: 3, ID: 9000003}, {Level: 2, ID: 9000002}},
					Ports:    []PortRange{{443, 443}, {80, 80}, {1024, 65535}},
					Balancer: Balancer{FallbackDefault: true}},
				{Name: "gone", ServicesUnresolved: true, Balancer: Balancer{Reject: true}},
				{Name: "web", Protocol: 6, Balancer: Balancer{}},
			},
		},
		"fallback_none_reject": {
			Table: "wanpin", Mask: 0xff,
			Uplinks: []Uplink{
				{Name: "a", Interface: "eth0", Mark: 1, Up: false, Masquerade: true},
				{Name: "b", Interface: "eth1", Mark: 2, Up: false, Masquerade: true},
			},
			Policies: []Policy{
				{Name: "strict", Destinations: pfx("203.0.113.0/24"), Balancer: Balancer{Reject: true}},
			},
			Default: Balancer{Reject: true},
		},
		"ipv6": {
			Table: "wanpin", Mask: 0xffffffff,
			Uplinks: []Uplink{
				{Name: "he", Interface: "sit1", Mark: 0x10, Up: true, Addrs: addrs("2001:db8:1::2")},
				{Name: "isp", Interface: "eth0", Mark: 0x20, Up: true, Masquerade: true, Addrs: addrs("2001:db8:2::2", "192.0.2.2")},
			},
			Policies: []Policy{
				{Name: "v6only", Sources: pfx("2001:db8:100::/56", "2001:db8:100:100::/56", "2001:db8:200::1/128"),
					Destinations: pfx("2001:db8::/32", "::/0"),
					Balancer:     Balancer{Buckets: []Bucket{{Mark: 0x10, Weight: 1}, {Mark: 0x20, Weight: 1}}}},
				{Name: "mixed", Destinations: pfx("0.0.0.0/0", "2001:db8:aaaa::/48", "2001:db8:aaaa:1::/64", "2001:db8:bbbb::/47"),
					Balancer: Balancer{Buckets: []Bucket{{Mark: 0x20, Weight: 1}}}},
			},
			Default: Balancer{Buckets: []Bucket{{Mark: 0x20, Weight: 1}}},
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
