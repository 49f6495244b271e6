package rules

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from Render")

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// nat is the uplink's snat addresses ("": unknown, masquerade).
func nat(v4, v6 string) inet.PerFamily[netip.Addr] {
	var p inet.PerFamily[netip.Addr]
	if v4 != "" {
		*p.Of(inet.IPv4) = netip.MustParseAddr(v4)
	}
	if v6 != "" {
		*p.Of(inet.IPv6) = netip.MustParseAddr(v6)
	}
	return p
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func twoUplinks() []desired.Uplink {
	return []desired.Uplink{
		{Name: "wan1", Interface: "eth1", Mark: 0x100, Masquerade: true, Addrs: addrs("192.0.2.10"), NAT: nat("192.0.2.10", "")},
		{Name: "wan2", Interface: "ppp0", Mark: 0x200, Addrs: addrs("198.51.100.20", "2001:db8:2::20")},
	}
}

// goldenSpecs are the representative Specs: the golden tests render them
// and the kernel tests load each into a namespace and compare what nft
// lists with the same golden text.
func goldenSpecs() map[string]desired.NFT {
	return map[string]desired.NFT{
		"two_up": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 4}, {Mark: 0x200, Weight: 2}}}),
		},
		// failback = "move" somewhere: the evict chains and elements.
		"failback": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(), Evict: 0xff00,
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}}),
		},
		// The second uplink's interface has no gateway (the LAN's, named
		// by mistake): neither inbound nor the guard, evict's included,
		// names it.
		"gatewayless": {
			Table: "wanpin", Mask: 0xff00, Uplinks: func() []desired.Uplink {
				us := twoUplinks()
				us[1].NoGateway = true
				return us
			}(), Evict: 0xff00,
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}}),
		},
		// sticky: the default balancing by source, a policy by source and
		// destination whose families choose differently (uplink 2 has no
		// IPv6), and a sticky policy with one candidate.
		"sticky": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: desired.Balancer{
				V4:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
				V6:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}},
				Sticky: desired.Sticky{Timeout: 10 * time.Minute},
			},
			Policies: []desired.Policy{
				{Name: "bank", Match: policy.Match{Ports: []policy.PortRange{{First: 443, Last: 443}}},
					Balancer: desired.Balancer{
						V4:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 2}, {Mark: 0x200, Weight: 1}}},
						V6:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}},
						Sticky: desired.Sticky{Timeout: 90 * time.Second, ByDestination: true},
					}},
				{Name: "one", Match: policy.Match{Protocol: policy.ProtoUDP},
					Balancer: desired.Balancer{
						V4:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}},
						V6:     desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}},
						Sticky: desired.Sticky{Timeout: time.Hour},
					}},
			},
		},
		// domains: a policy of domains for forwarded and local traffic,
		// one of domains from one source, and the hold rules for the
		// DNS answers of both uplinks; with MPTCP, whose subflows the
		// output chain leaves alone.
		"domains": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(), DNSHold: desired.DNSHold{Group: 5353, Mark: 0xff00}, MPTCP: true,
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}}),
			Policies: []desired.Policy{
				{Name: "tv", Match: policy.Match{Domains: []string{"example.com", "video.example.net"}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}})},
				{Name: "kids", Match: policy.Match{Sources: pfx("192.0.2.128/25"), Domains: []string{"example.org"}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}})},
			},
		},
		"one_down": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}}),
		},
		"all_matchers": {
			Table: "wanpin", Mask: 0x0f000000,
			Uplinks: []desired.Uplink{
				{Name: "fiber", Interface: "enp1s0", Mark: 0x01000000, Masquerade: true},
				{Name: "lte", Interface: "wwan0", Mark: 0x02000000, Addrs: addrs("203.0.113.7")},
				{Name: "dsl-b", Interface: "ppp1", Mark: 0x03000000, Addrs: addrs("198.51.100.1", "198.51.100.2", "2001:db8:3::1")},
			},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x01000000, Weight: 3}, {Mark: 0x02000000, Weight: 1}, {Mark: 0x03000000, Weight: 2}}}),
			Policies: []desired.Policy{{Name: "voip", Match: policy.Match{Sources: pfx("192.0.2.64/26", "2001:db8:10::/48"), InInterfaces: []string{"lan0", "br-guest", "lan0"}, Destinations: pfx("198.51.100.0/25", "198.51.100.128/25", "203.0.113.5/32", "2001:db8:99::/64"), Protocol: 17, Ports: []policy.PortRange{{First: 5060, Last: 5061}, {First: 10000, Last: 20000}, {First: 5062, Last: 5062}}}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x02000000, Weight: 1}}})},
				{Name: "backup", Match: policy.Match{UIDs: []uint32{34, 0, 1000}, GIDs: []uint32{100}, Destinations: pfx("192.0.2.0/24")}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x03000000, Weight: 10}, {Mark: 0x01000000, Weight: 5}}})},
				{Name: "svc", Match: policy.Match{Cgroups: []policy.CgroupMatch{{Level: 2, ID: 9000001}, {Level: 3, ID: 9000003}, {Level: 2, ID: 9000002}}, Ports: []policy.PortRange{{First: 443, Last: 443}, {First: 80, Last: 80}, {First: 1024, Last: 65535}}}, Balancer: desired.Both(desired.Choice{FallbackDefault: true})},
				{Name: "gone", Match: policy.Match{Services: []string{"gone.service"}}, Balancer: desired.Both(desired.Choice{Reject: true})},
				{Name: "web", Match: policy.Match{Protocol: 6}, Balancer: desired.Both(desired.Choice{})}},
		},
		// source_ports, with and without a protocol, beside destination
		// ports: nft folds each dependency into `udp sport`, and merges
		// one destination and one source port into one load.
		"source_ports": {
			Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
			Policies: []desired.Policy{
				{Name: "wireguard", Match: policy.Match{Protocol: policy.ProtoUDP, SourcePorts: []policy.PortRange{{First: 51820, Last: 51820}}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}})},
				{Name: "both", Match: policy.Match{Ports: []policy.PortRange{{First: 443, Last: 443}}, SourcePorts: []policy.PortRange{{First: 1024, Last: 65535}}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}})},
				{Name: "tcp-both", Match: policy.Match{Protocol: policy.ProtoTCP, Ports: []policy.PortRange{{First: 22, Last: 22}}, SourcePorts: []policy.PortRange{{First: 2222, Last: 2222}}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}})},
				// One port each and no protocol: nft's merged load has no
				// name but the raw one.
				{Name: "any-both", Match: policy.Match{Ports: []policy.PortRange{{First: 53, Last: 53}}, SourcePorts: []policy.PortRange{{First: 5353, Last: 5353}}},
					Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x200, Weight: 1}}})},
			},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}}}),
		},
		// Runs of one-key policies, folded into verdict maps: hosts by
		// source (IPv4 and IPv6 interleaved, which commute), with
		// single-uplink, balanced and rejecting terminals; then users.
		"folded": foldedSpec(),
		"fallback_none_reject": {
			Table: "wanpin", Mask: 0xff,
			Uplinks: []desired.Uplink{
				{Name: "a", Interface: "eth0", Mark: 1, Masquerade: true},
				{Name: "b", Interface: "eth1", Mark: 2, Masquerade: true},
			},
			// Its rules reject by the family their match selects, as nft
			// makes a plain reject there (rejectIn).
			Policies: []desired.Policy{{Name: "strict", Match: policy.Match{Destinations: pfx("203.0.113.0/24", "2001:db8:ff::/64")}, Balancer: desired.Both(desired.Choice{Reject: true})}},
			Default:  desired.Both(desired.Choice{Reject: true}),
		},
		// The same with a mark to spare: the rejects mark the connection
		// and refuse it only where it leaves by an uplink; a policy whose
		// IPv4 alone rejects (its uplink has no IPv6 up).
		"reject_routed": {
			Table: "wanpin", Mask: 0xff, RejectMark: 0xff,
			Uplinks: []desired.Uplink{
				{Name: "a", Interface: "eth0", Mark: 1, Masquerade: true},
				{Name: "b", Interface: "eth1", Mark: 2, Masquerade: true},
			},
			Policies: []desired.Policy{
				{Name: "strict", Match: policy.Match{Destinations: pfx("203.0.113.0/24")}, Balancer: desired.Both(desired.Choice{Reject: true})},
				{Name: "v4only", Match: policy.Match{UIDs: []uint32{1001}}, Balancer: desired.Balancer{
					V4: desired.Choice{Reject: true}, V6: desired.Choice{Buckets: []desired.Bucket{{Mark: 2, Weight: 1}}}}},
			},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 1, Weight: 1}}}),
		},
		// Without a reject, RejectMark adds nothing.
		"reject_unused": {
			Table: "wanpin", Mask: 0xff, RejectMark: 0xff,
			Uplinks: []desired.Uplink{{Name: "a", Interface: "eth0", Mark: 1, Masquerade: true}},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 1, Weight: 1}}}),
		},
		"ipv6": {
			Table: "wanpin", Mask: 0xffffffff,
			Uplinks: []desired.Uplink{
				{Name: "he", Interface: "sit1", Mark: 0x10, Addrs: addrs("2001:db8:1::2")},
				{Name: "isp", Interface: "eth0", Mark: 0x20, Masquerade: true, Addrs: addrs("2001:db8:2::2", "192.0.2.2")},
			},
			Policies: []desired.Policy{{Name: "v6only", Match: policy.Match{Sources: pfx("2001:db8:100::/56", "2001:db8:100:100::/56", "2001:db8:200::1/128"), Destinations: pfx("2001:db8::/32", "::/0")}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x10, Weight: 1}, {Mark: 0x20, Weight: 1}}})},
				{Name: "mixed", Match: policy.Match{Destinations: pfx("0.0.0.0/0", "2001:db8:aaaa::/48", "2001:db8:aaaa:1::/64", "2001:db8:bbbb::/47")}, Balancer: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x20, Weight: 1}}})}},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x20, Weight: 1}}}),
		},
		// Every IPv6 mode at once, and balancers whose families differ:
		// "lte" has no IPv6, "dsl" lost its IPv4.
		// An uplink with a second address of each family (a renumber in
		// progress, a SLAAC and a DHCPv6 address): the router's packets
		// from those leave untranslated, MPTCP subflows from them
		// included.
		"own_addrs": {
			Table: "wanpin", Mask: 0xff00,
			Uplinks: []desired.Uplink{
				{Name: "wan1", Interface: "eth1", Mark: 0x100, Masquerade: true,
					Addrs: addrs("192.0.2.10", "192.0.2.11", "2001:db8:1::10", "2001:db8:1::11", "2001:db8:1::12"), NAT: nat("192.0.2.10", "2001:db8:1::10")},
				{Name: "wan2", Interface: "ppp0", Mark: 0x200, Addrs: addrs("198.51.100.20"), NAT: nat("198.51.100.20", "")},
			},
			Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}}),
		},
		"dualstack": {
			Table: "wanpin", Mask: 0x00ff0000, LANPrefix6: pfx("2001:db8:1::/64")[0],
			Uplinks: []desired.Uplink{
				{Name: "fibre", Interface: "eth1", Mark: 0x10000, Masquerade: true, NAT6: desired.NAT6None,
					Prefix6: pfx("2001:db8:d1::/56")[0], Addrs: addrs("198.51.100.2", "2001:db8:101::2"), NAT: nat("198.51.100.2", "2001:db8:101::2")},
				{Name: "dsl", Interface: "ppp0", Mark: 0x20000, Masquerade: true, NAT6: desired.NAT6Prefix,
					Prefix6: pfx("2001:db8:d2:100::/64")[0], Addrs: addrs("2001:db8:102::2")},
				{Name: "lte", Interface: "wwan0", Mark: 0x30000, Masquerade: false, NAT6: desired.NAT6None,
					Prefix6: pfx("2001:db8:d3::/60")[0], Addrs: addrs("203.0.113.7")},
			},
			Source6: []desired.SourcePrefix{{Prefix: pfx("2001:db8:d1::/56")[0], Mark: 0x10000}},
			Policies: []desired.Policy{{Name: "voip", Match: policy.Match{Protocol: 17, Ports: []policy.PortRange{{First: 5060, Last: 5061}}}, Balancer: desired.Balancer{V4: desired.Choice{Buckets: []desired.Bucket{{Mark: 0x30000, Weight: 1}}}, V6: desired.Choice{Reject: true}}},
				{Name: "office", Match: policy.Match{Destinations: pfx("203.0.113.0/24", "2001:db8:ff::/64")}, Balancer: desired.Balancer{V4: desired.Choice{Reject: true}, V6: desired.Choice{FallbackDefault: true}}},
				{Name: "bulk", Match: policy.Match{Sources: pfx("192.0.2.20/32", "2001:db8:1::20/128")}, Balancer: desired.Balancer{V4: desired.Choice{}, V6: desired.Choice{Buckets: []desired.Bucket{{Mark: 0x20000, Weight: 1}}}}}},
			Default: desired.Balancer{V4: desired.Choice{Buckets: []desired.Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x30000, Weight: 1}}}, V6: desired.Choice{Buckets: []desired.Bucket{{Mark: 0x10000, Weight: 2}, {Mark: 0x20000, Weight: 1}}}},
		},
	}
}

func TestRenderGolden(t *testing.T) {
	for name, s := range goldenSpecs() {
		t.Run(name, func(t *testing.T) {
			if err := Validate(s); err != nil {
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
			checkGolden(t, filepath.Join("testdata", name+".keep.golden"), RenderKeep(s))
		})
	}
}

// checkGolden compares got with the golden file at path (-update
// rewrites it).
func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestRenderGolden -update)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s mismatch (-golden +got):\n%s", path, d)
	}
}

func TestRenderNoCandidateRejects(t *testing.T) {
	s := goldenSpecs()["fallback_none_reject"]
	out := Render(s)
	for _, want := range []string{
		"\t\tip daddr 203.0.113.0/24 reject with icmp port-unreachable\n",
		"\t\tip6 daddr 2001:db8:ff::/64 reject with icmpv6 port-unreachable\n",
		"\tchain bal_default_chain {\n\t\treject\n\t}\n",
		// Down uplinks keep their restore element (see layout.md).
		"0x00000001 : goto mark_a, 0x00000002 : goto mark_b",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
}

func foldedSpec() desired.NFT {
	one := func(mark uint32) desired.Balancer {
		return desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: mark, Weight: 1}}})
	}
	both := desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 2}, {Mark: 0x200, Weight: 1}}})
	s := desired.NFT{Table: "wanpin", Mask: 0xff00, Uplinks: twoUplinks(),
		Default: desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}})}
	for i := range 12 {
		bal := []desired.Balancer{one(0x100), one(0x200), both, desired.Both(desired.Choice{Reject: true})}[i%4]
		s.Policies = append(s.Policies,
			desired.Policy{Name: fmt.Sprintf("host%d", i), Match: policy.Match{Sources: pfx(fmt.Sprintf("192.0.2.%d/32", 10+i))}, Balancer: bal},
			desired.Policy{Name: fmt.Sprintf("host%d-v6", i), Match: policy.Match{Sources: pfx(fmt.Sprintf("2001:db8:1::%x/128", 0x10+i))}, Balancer: bal})
	}
	// Overlapping: the /28 comes after the hosts in it, which keep theirs.
	s.Policies = append(s.Policies, desired.Policy{Name: "rest", Match: policy.Match{Sources: pfx("192.0.2.0/28")}, Balancer: one(0x200)})
	for i := range 9 {
		s.Policies = append(s.Policies, desired.Policy{Name: fmt.Sprintf("user%d", i), Match: policy.Match{UIDs: []uint32{uint32(1000 + i)}}, Balancer: one(0x100)})
	}
	// Destinations apply to forwarded and local traffic alike: one map,
	// looked up in prerouting and output; sets of two prefixes fold too.
	for i := range 8 {
		s.Policies = append(s.Policies, desired.Policy{Name: fmt.Sprintf("dst%d", i),
			Match:    policy.Match{Destinations: pfx(fmt.Sprintf("203.0.113.%d/32", 2*i), fmt.Sprintf("198.51.100.%d/32", 128+2*i))},
			Balancer: []desired.Balancer{one(0x100), one(0x200)}[i%2]})
	}
	return s
}
