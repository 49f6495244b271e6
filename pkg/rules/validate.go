package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/ifname"
	"github.com/wanpin/wanpin/pkg/policy"
)

var (
	nameRE = regexp.MustCompile(`^[a-z0-9_-]+$`)
	// tableRE: nft's scanner accepts these as an unquoted identifier.
	tableRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_-]*$`)
)

const (
	maxUplinkName = 15
	maxPolicyName = 31
	// maxBuckets caps a balancer's map after gcd reduction: one element per
	// unit of weight, and 1,000 is already a precision of 0.1%.
	maxBuckets = 1000
)

// Validate reports the first reason the kernel would refuse s, or the
// table would not do what s says. Apply calls it; Render does not, so that
// `wanpin plan` can still show a broken spec.
func Validate(s desired.NFT) error {
	if !tableRE.MatchString(s.Table) {
		return fmt.Errorf("table name %q: want a letter or _ then [a-zA-Z0-9_-]", s.Table)
	}
	if s.Mask == 0 {
		return errors.New("mask is zero")
	}
	marks := map[uint32]string{}
	names := map[string]bool{}
	ifaces := map[string]string{}
	for _, u := range s.Uplinks {
		if len(u.Name) > maxUplinkName || !nameRE.MatchString(u.Name) {
			return fmt.Errorf("uplink %q: name must be 1-%d characters of [a-z0-9_-]", u.Name, maxUplinkName)
		}
		if names[u.Name] {
			return fmt.Errorf("uplink %q: duplicate name", u.Name)
		}
		names[u.Name] = true
		if u.Mark == 0 || u.Mark&^s.Mask != 0 {
			return fmt.Errorf("uplink %s: mark %#x must be non-zero and inside mask %#x", u.Name, u.Mark, s.Mask)
		}
		if other, ok := marks[u.Mark]; ok {
			return fmt.Errorf("uplink %s: mark %#x already used by uplink %s", u.Name, u.Mark, other)
		}
		marks[u.Mark] = u.Name
		if err := ifname.Check(u.Interface); err != nil {
			return fmt.Errorf("uplink %s: %w", u.Name, err)
		}
		if other, ok := ifaces[u.Interface]; ok {
			return fmt.Errorf("uplink %s: interface %q already used by uplink %s", u.Name, u.Interface, other)
		}
		ifaces[u.Interface] = u.Name
		for _, a := range u.Addrs {
			if !a.IsValid() {
				return fmt.Errorf("uplink %s: invalid address", u.Name)
			}
		}
		if err := checkNAT6(s, u); err != nil {
			return fmt.Errorf("uplink %s: %w", u.Name, err)
		}
	}
	var srcs []netip.Prefix
	for _, sp := range s.Source6 {
		if !sp.Prefix.IsValid() || !sp.Prefix.Addr().Is6() || sp.Prefix.Addr().Is4In6() {
			return fmt.Errorf("source prefix %v: want an IPv6 prefix", sp.Prefix)
		}
		if _, ok := marks[sp.Mark]; !ok {
			return fmt.Errorf("source prefix %v: mark %#x is no uplink's mark", sp.Prefix, sp.Mark)
		}
		for _, o := range srcs {
			if o.Overlaps(sp.Prefix) {
				// An interval map refuses overlapping elements.
				return fmt.Errorf("source prefix %v overlaps %v", sp.Prefix, o)
			}
		}
		srcs = append(srcs, sp.Prefix)
	}
	if err := checkBalancer(s.Default, marks); err != nil {
		return fmt.Errorf("default balancer: %w", err)
	}
	for _, c := range []desired.Choice{s.Default.V4, s.Default.V6} {
		if c.FallbackDefault && len(c.Buckets) == 0 {
			return errors.New("default balancer: cannot fall back to itself")
		}
	}
	pols := map[string]bool{}
	for _, p := range s.Policies {
		if len(p.Name) > maxPolicyName || !nameRE.MatchString(p.Name) {
			return fmt.Errorf("policy %q: name must be 1-%d characters of [a-z0-9_-]", p.Name, maxPolicyName)
		}
		if pols[p.Name] {
			return fmt.Errorf("policy %q: duplicate name", p.Name)
		}
		pols[p.Name] = true
		if err := checkPolicy(p.Match); err != nil {
			return fmt.Errorf("policy %s: %w", p.Name, err)
		}
		if err := checkBalancer(p.Balancer, marks); err != nil {
			return fmt.Errorf("policy %s: %w", p.Name, err)
		}
	}
	return nil
}

func checkPolicy(p policy.Match) error {
	switch p.Protocol {
	case 0, 6, 17:
	default:
		return fmt.Errorf("protocol %d: want 0 (any), 6 (tcp) or 17 (udp)", p.Protocol)
	}
	for _, r := range p.Ports {
		if r.First > r.Last {
			return fmt.Errorf("port range %d-%d is reversed", r.First, r.Last)
		}
	}
	for _, c := range p.Cgroups {
		// The kernel walks at most 255 ancestors (level is a u8 there).
		if c.Level < 0 || c.Level > 255 {
			return fmt.Errorf("cgroup %d: level %d out of range 0-255", c.ID, c.Level)
		}
	}
	for _, n := range p.InInterfaces {
		if err := ifname.Check(n); err != nil {
			return fmt.Errorf("in_interfaces: %w", err)
		}
	}
	for _, pf := range append(append([]netip.Prefix(nil), p.Sources...), p.Destinations...) {
		if !pf.IsValid() {
			return errors.New("invalid prefix")
		}
	}
	return nil
}

func checkNAT6(s desired.NFT, u desired.Uplink) error {
	switch u.NAT6 {
	case "", desired.NAT6Masquerade:
		return nil
	case desired.NAT6None, desired.NAT6Prefix:
	default:
		return fmt.Errorf("nat6 %q: want masquerade, none or prefix", u.NAT6)
	}
	if !u.Prefix6.IsValid() || !u.Prefix6.Addr().Is6() || u.Prefix6.Masked() != u.Prefix6 {
		return fmt.Errorf("nat6 %s needs an IPv6 prefix6 without host bits, got %v", u.NAT6, u.Prefix6)
	}
	if u.NAT6 == desired.NAT6Prefix {
		l := s.LANPrefix6
		if !l.IsValid() || !l.Addr().Is6() || l.Masked() != l || l.Bits() != u.Prefix6.Bits() {
			return fmt.Errorf("nat6 prefix needs a LAN prefix as long as %v, got %v", u.Prefix6, l)
		}
	}
	return nil
}

func checkBalancer(b desired.Balancer, marks map[uint32]string) error {
	if err := checkChoice(b.V4, marks); err != nil {
		return fmt.Errorf("IPv4: %w", err)
	}
	if err := checkChoice(b.V6, marks); err != nil {
		return fmt.Errorf("IPv6: %w", err)
	}
	return nil
}

func checkChoice(b desired.Choice, marks map[uint32]string) error {
	seen := map[uint32]bool{}
	for _, bk := range b.Buckets {
		if _, ok := marks[bk.Mark]; !ok {
			return fmt.Errorf("bucket mark %#x is no uplink's mark", bk.Mark)
		}
		if seen[bk.Mark] {
			return fmt.Errorf("bucket mark %#x listed twice", bk.Mark)
		}
		seen[bk.Mark] = true
		if bk.Weight < 1 {
			return fmt.Errorf("bucket mark %#x: weight %d < 1", bk.Mark, bk.Weight)
		}
	}
	if _, w := reducedWeights(b.Buckets); w > maxBuckets {
		return fmt.Errorf("weights sum to %d after reduction by their gcd; at most %d", w, maxBuckets)
	}
	return nil
}
