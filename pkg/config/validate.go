package config

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"os/user"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

func (p *parser) markMask(n node) (uint32, bool) {
	v, ok := n.v.(int64)
	if !ok {
		p.errorf(n, "mark_mask must be an integer, got %s", describe(n.v))
		return 0, false
	}
	if v <= 0 || v > 0xffffffff {
		p.errorf(n, "mark_mask must be a non-zero 32-bit mask, got %s", describe(v))
		return 0, false
	}
	m := uint32(v)
	// Marks are counters shifted into the mask: a mask with holes in it
	// would let a counter's carry spill into bits that are not wanpin's.
	if run := m >> bits.TrailingZeros32(m); run&(run+1) != 0 {
		p.errorf(n, "mark_mask %#08x must be one contiguous run of bits, like 0x00ff0000", m)
		return 0, false
	}
	return m, true
}

func (p *parser) rulePriority(n node) (int, bool) {
	v, ok := n.v.(int64)
	if !ok {
		p.errorf(n, "rule_priority must be an integer, got %s", describe(n.v))
		return 0, false
	}
	if v < 1 || v > MaxRulePriority {
		p.errorf(n, "rule_priority must be 1..%d, got %d: wanpin uses %d priorities from there, which must stay below 32766 (the main table's rule)",
			MaxRulePriority, v, RuleBlock)
		return 0, false
	}
	return int(v), true
}

// checkMarkRoom makes sure every uplink has a mark: marks are 1..2^bits-1,
// 0 meaning "no uplink chosen".
func (p *parser) checkMarkRoom(cfg *Config, mark node, markSet bool, uplinks []uplinkSrc) {
	room := uint64(1)<<bits.OnesCount32(cfg.MarkMask) - 1
	if cfg.Failback() {
		// The mask's last value marks connections moved off by failback
		// (EvictMark): an uplink cannot have it.
		room--
		if uint64(len(uplinks)) > room {
			for _, u := range uplinks {
				if u.failback.v != nil {
					p.errorf(u.failback, "failback = \"move\" needs a mark value of its own: mark_mask %#08x has room for %d uplinks besides it, %d are configured; set a wider mark_mask",
						cfg.MarkMask, room, len(uplinks))
					return
				}
			}
		}
		return
	}
	if uint64(len(uplinks)) <= room {
		return
	}
	if markSet {
		p.errorf(mark, "mark_mask %#08x has room for %d uplinks, %d are configured", cfg.MarkMask, room, len(uplinks))
		return
	}
	p.errorf(uplinks[room].elem, "too many uplinks: the default mark_mask %#08x has room for %d; set a wider mark_mask",
		cfg.MarkMask, room)
}

// checkUplinks checks what must be unique across uplinks and assigns the
// routing tables that are not configured.
func (p *parser) checkUplinks(cfg *Config, srcs []uplinkSrc) {
	names := map[string]int{}
	ifaces := map[string]int{}
	tables := map[int]int{}
	for i, u := range cfg.Uplinks {
		if u.Name != "" {
			if first, dup := names[u.Name]; dup {
				p.errorf(srcs[i].name, "duplicate uplink name %q (first at line %d)", u.Name, srcs[first].name.line)
			} else {
				names[u.Name] = i
			}
		}
		if u.Interface != "" {
			if first, dup := ifaces[u.Interface]; dup {
				p.errorf(srcs[i].iface, "interface %q is already used by %s at line %d", u.Interface, srcs[first].elem.key, srcs[first].iface.line)
			} else {
				ifaces[u.Interface] = i
			}
		}
		if u.Table != 0 {
			if first, dup := tables[u.Table]; dup {
				p.errorf(srcs[i].table, "table %d is already used by %s at line %d", u.Table, srcs[first].elem.key, srcs[first].table.line)
			} else {
				tables[u.Table] = i
			}
		}
	}
	// Tables not configured are chosen at run time, where the kernel's
	// tables can be seen (core.AssignTables).
}

// checkAutoWeights refuses a tier that mixes weight = "auto" with fixed
// weights: auto weights are on a scale of their own (the fastest auto
// uplink of a tier has 100), which a fixed weight cannot be compared to.
func (p *parser) checkAutoWeights(cfg *Config, srcs []uplinkSrc) {
	auto, fixed := map[int]int{}, map[int]int{} // tier -> first uplink
	for i, u := range cfg.Uplinks {
		m := fixed
		if u.AutoWeight {
			m = auto
		}
		if _, ok := m[u.Tier]; !ok {
			m[u.Tier] = i
		}
	}
	for i, u := range cfg.Uplinks {
		first, mixed := fixed[u.Tier]
		if !u.AutoWeight || !mixed {
			continue
		}
		at := srcs[i].weight
		fw := "its default weight 1"
		if srcs[first].weightSet {
			fw = fmt.Sprintf("weight %d at line %d", cfg.Uplinks[first].Weight, srcs[first].weight.line)
		}
		p.errorf(at, `weight = "auto" in tier %d, where %s has %s: give every uplink of a tier weight = "auto", or none`,
			u.Tier, srcs[first].elem.key, fw)
	}
}

// ReservedTable: the kernel's default (253), main (254) and local (255)
// tables, and 0, which means "unspecified" to netlink.
func ReservedTable(id int) bool { return id == 0 || id >= 253 && id <= 255 }

// FirstAutoTable is where automatically chosen routing tables start:
// below it are ids admins and other software commonly hand out.
const FirstAutoTable = 200

// dnsServers reads an uplink's resolvers: unicast addresses of either
// family (not link-local: a resolver is reached by the uplink's route).
func (p *parser) dnsServers(n node) []netip.Addr {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	if len(elems) > MaxDNS {
		p.errorf(elems[MaxDNS], "more than %d dns servers, the most an uplink lists", MaxDNS)
	}
	var out []netip.Addr
	for _, e := range elems {
		s, ok := p.str(e)
		if !ok {
			continue
		}
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil || a.Zone() != "":
			p.errorf(e, "dns %q is not an IP address", s)
		case !a.Unmap().IsGlobalUnicast() || a.Unmap().IsLinkLocalUnicast():
			p.errorf(e, "dns %q must be a unicast address reached through the uplink (not link-local, multicast or loopback)", s)
		case slices.Contains(out, a.Unmap()):
			p.errorf(e, "dns %q is listed twice", s)
		default:
			out = append(out, a.Unmap())
		}
	}
	return out
}

func checkTable(v int64) error {
	if v < 1 || v > 0xffffffff || ReservedTable(int(v)) {
		return fmt.Errorf("table must be 1..4294967295 and not 253 (default), 254 (main) or 255 (local), got %d", v)
	}
	return nil
}

var (
	uplinkNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,14}$`)
	policyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,30}$`)
)

// Names are short and plain because they end up in logs, in nftables
// comments and set names, and in `wanpin status` columns.
func checkUplinkName(s string) error {
	if !uplinkNameRE.MatchString(s) {
		return fmt.Errorf("name must be 1 to 15 of a-z, 0-9, '_' and '-', starting with a letter or digit, got %q", s)
	}
	return nil
}

func checkPolicyName(s string) error {
	if !policyNameRE.MatchString(s) {
		return fmt.Errorf("name must be 1 to 31 of a-z, 0-9, '_' and '-', starting with a letter or digit, got %q", s)
	}
	if s == "default" {
		// st4_default_m1, stk_default_m1...: the default balancing's names.
		return fmt.Errorf(`name "default" is the default balancing's: choose another`)
	}
	return nil
}

// parseGateway reads gateway (IPv4) or gateway6 (IPv6, link-local
// allowed: routers learned from router advertisements are link-local).
func parseGateway(key, s string, f inet.Family) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err == nil {
		a = a.Unmap()
	}
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%s must be an %v address, got %q", key, f, s)
	case inet.Of(a) != f:
		other := map[inet.Family]string{inet.IPv4: "gateway", inet.IPv6: "gateway6"}[inet.Of(a)]
		return netip.Addr{}, fmt.Errorf("%s must be an %v address, got %q (an %v gateway goes in %s)", key, f, s, inet.Of(a), other)
	case a.Zone() != "":
		// The uplink's interface is the zone: another one would contradict it.
		return netip.Addr{}, fmt.Errorf("%s must not have a zone (the uplink's interface is used), got %q", key, s)
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
		return netip.Addr{}, fmt.Errorf("%s must be a unicast address, got %q", key, s)
	case a.IsLinkLocalUnicast() && f == inet.IPv4:
		return netip.Addr{}, fmt.Errorf("%s must not be link-local, got %q", key, s)
	}
	return a, nil
}

// parsePrefix6 reads an IPv6 prefix the router routes for: global
// unicast (documentation and ULA included), 1..64 bits, no host bits set.
func parsePrefix6(key, s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	switch {
	case err != nil || !pfx.Addr().Is6() || pfx.Addr().Is4In6():
		return netip.Prefix{}, fmt.Errorf(`%s must be an IPv6 prefix like "2001:db8:d1::/56", got %q`, key, s)
	case pfx.Addr().Zone() != "":
		return netip.Prefix{}, fmt.Errorf("%s must not have a zone, got %q", key, s)
	case pfx.Bits() < 1 || pfx.Bits() > 64:
		return netip.Prefix{}, fmt.Errorf("%s must be /1 to /64 (LAN hosts need 64 bits of their own), got %q", key, s)
	case pfx.Masked() != pfx:
		return netip.Prefix{}, fmt.Errorf("%s has host bits set: did you mean %q?", key, pfx.Masked().String())
	case pfx.Addr().IsLinkLocalUnicast() || pfx.Addr().IsMulticast() || pfx.Addr().IsLoopback() || pfx.Addr().IsUnspecified():
		return netip.Prefix{}, fmt.Errorf("%s must be a global or unique-local prefix, got %q", key, s)
	}
	return pfx, nil
}

// checkNat6 checks what the nat6 modes need: a prefix6 for none and
// prefix, a lan_prefix6 as long as it for prefix, and prefixes of
// different uplinks that do not overlap (a source address must name one
// uplink).
func (p *parser) checkNat6(cfg *Config, srcs []uplinkSrc, lan6 node, lan6Set bool) {
	var needLAN *node
	for i, u := range cfg.Uplinks {
		src := srcs[i]
		where := src.elem
		if src.nat6Set {
			where = src.nat6
		}
		switch {
		case u.Nat6 != Nat6Masquerade && !src.prefix6Set:
			p.errorf(where, `nat6 = %q needs prefix6, the IPv6 prefix the ISP routes to this router`, u.Nat6)
		case u.Nat6 == Nat6Prefix:
			if needLAN == nil {
				needLAN = &where
			}
			if cfg.LANPrefix6.IsValid() && u.Prefix6.IsValid() && u.Prefix6.Bits() != cfg.LANPrefix6.Bits() {
				p.errorf(src.prefix6, "prefix6 %s must be as long as lan_prefix6 %s for a 1:1 translation (pick a /%d out of the ISP's prefix)",
					u.Prefix6, cfg.LANPrefix6, cfg.LANPrefix6.Bits())
			}
			if cfg.LANPrefix6.IsValid() && u.Prefix6.IsValid() && u.Prefix6.Overlaps(cfg.LANPrefix6) {
				p.errorf(src.prefix6, "prefix6 %s overlaps lan_prefix6 %s", u.Prefix6, cfg.LANPrefix6)
			}
		}
		// Over the limit, the limit's message is enough: this is quadratic.
		if !u.Prefix6.IsValid() || len(cfg.Uplinks) > MaxUplinks {
			continue
		}
		for j := range i {
			if o := cfg.Uplinks[j]; o.Prefix6.IsValid() && o.Prefix6.Overlaps(u.Prefix6) {
				p.errorf(src.prefix6, "prefix6 %s overlaps uplink %q's prefix6 %s: a source address must belong to one uplink",
					u.Prefix6, o.Name, o.Prefix6)
			}
		}
	}
	if needLAN != nil && !lan6Set {
		p.errorf(*needLAN, `nat6 = "prefix" needs lan_prefix6 at the top of the file: the LAN's IPv6 prefix to translate`)
	}
}

func parseProtocol(s string) (uint8, error) {
	switch s {
	case "tcp":
		return policy.ProtoTCP, nil
	case "udp":
		return policy.ProtoUDP, nil
	case "any":
		return policy.ProtoAny, nil
	}
	return 0, fmt.Errorf(`protocol must be "tcp", "udp" or "any", got %q`, s)
}

// checkService accepts what the cgroup matcher can resolve at run time: a
// systemd unit that owns processes, or an absolute cgroup v2 path.
func checkService(s string) error {
	if strings.HasPrefix(s, "/") {
		if path.Clean(s) != s || strings.ContainsFunc(s, isControl) {
			return fmt.Errorf("cgroup path %q must be clean and absolute, like /system.slice/foo.service", s)
		}
		return nil
	}
	// Only these unit types have a cgroup of their own that holds
	// processes for long: a .target or .timer never matches anything.
	base, suffix, ok := cutLast(s, ".")
	okSuffix := suffix == "service" || suffix == "scope" || suffix == "slice"
	if !ok || !okSuffix || base == "" || len(s) > 255 || strings.ContainsFunc(base, notUnitChar) {
		return fmt.Errorf("service %q is neither a systemd unit (name.service, .scope or .slice) nor an absolute cgroup path", s)
	}
	return nil
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// notUnitChar: systemd unit names are made of these and nothing else.
func notUnitChar(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r))
}

// idKind resolves users or groups.
type idKind struct {
	what, id string // "user", "uid"
	lookup   func(name string) (string, error)
}

var (
	lookupUser = idKind{"user", "uid", func(name string) (string, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	}}
	lookupGroup = idKind{"group", "gid", func(name string) (string, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	}}
)

// maxID excludes (uid_t)-1, which the kernel uses for "no id".
const maxID = 1<<32 - 2

// ids resolves users or groups, written as names, numeric strings or
// integers.
func (p *parser) ids(n node, kind idKind) []uint32 {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	var out []uint32
	seen := map[uint32]string{}
	for _, e := range elems {
		var id uint64
		var written string
		switch v := e.v.(type) {
		case int64:
			written = strconv.FormatInt(v, 10)
			if v < 0 || v > maxID {
				p.errorf(e, "%s %d must be 0..%d", kind.id, v, maxID)
				continue
			}
			id = uint64(v)
		case string:
			written = strconv.Quote(v)
			var err error
			if id, err = resolveID(kind, v); err != nil {
				p.errorf(e, "%s", err)
				continue
			}
		default:
			p.errorf(e, "%s entries must be %s names or %ss, got %s", n.name, kind.what, kind.id, describe(e.v))
			continue
		}
		if first, dup := seen[uint32(id)]; dup {
			p.errorf(e, "%s is %s %d again (already listed as %s)", written, kind.id, id, first)
			continue
		}
		seen[uint32(id)] = written
		out = append(out, uint32(id))
	}
	return out
}

func resolveID(kind idKind, s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("%s must not be empty", kind.what)
	}
	num := s
	if strings.Trim(s, "0123456789") != "" {
		var err error
		num, err = kind.lookup(s)
		var unknownUser user.UnknownUserError
		var unknownGroup user.UnknownGroupError
		switch {
		case errors.As(err, &unknownUser) || errors.As(err, &unknownGroup):
			return 0, fmt.Errorf("unknown %s %q", kind.what, s)
		case err != nil:
			return 0, fmt.Errorf("%s %q: %v", kind.what, s, err)
		}
	}
	id, err := strconv.ParseUint(num, 10, 64)
	if err != nil || id > maxID {
		return 0, fmt.Errorf("%s %q must be 0..%d", kind.id, s, maxID)
	}
	return id, nil
}

// prefixes reads addresses or networks; a bare address means that host.
// Overlapping entries are refused: they are always a mistake (one of them is
// dead) and would make the nftables interval set fail to load.
func (p *parser) prefixes(n node) []netip.Prefix {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	type entry struct {
		pfx  netip.Prefix
		node node
		s    string
		pos  int
	}
	var entries []entry
	for _, e := range elems {
		s, ok := e.v.(string)
		if !ok {
			p.errorf(e, "%s entries must be strings like \"192.0.2.0/24\", got %s", n.name, describe(e.v))
			continue
		}
		pfx, err := parsePrefix(s)
		if p.check(e, err) {
			entries = append(entries, entry{pfx, e, s, len(entries)})
		}
	}
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b entry) int {
		return cmp.Or(a.pfx.Addr().Compare(b.pfx.Addr()), cmp.Compare(a.pfx.Bits(), b.pfx.Bits()))
	})
	// Sorted by address, then shortest first, a prefix overlaps an earlier
	// one only if the latest one not itself inside another contains it.
	var cover *entry
	for i := range sorted {
		cur := &sorted[i]
		if cover == nil || !cover.pfx.Overlaps(cur.pfx) {
			cover = cur
			continue
		}
		first, later := cover, cur
		if later.pos < first.pos {
			first, later = later, first
		}
		if first.pfx == later.pfx {
			p.errorf(later.node, "%q is listed twice", later.s)
		} else {
			p.errorf(later.node, "%q overlaps %q", later.s, first.s)
		}
	}
	out := make([]netip.Prefix, len(entries))
	for i, e := range entries {
		out[i] = e.pfx
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or network like 192.0.2.0/24", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or network like 192.0.2.0/24", s)
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %s?", s, m)
	}
	return pfx, nil
}

// ports reads destination or source ports: "80", "6881-6889" or 80.
func (p *parser) ports(n node) []policy.PortRange {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	type entry struct {
		r    policy.PortRange
		node node
		s    string
		pos  int
	}
	var entries []entry
	for _, e := range elems {
		var r policy.PortRange
		var s string
		switch v := e.v.(type) {
		case int64:
			s = strconv.FormatInt(v, 10)
			if v < 1 || v > 65535 {
				p.errorf(e, "port %d must be 1..65535", v)
				continue
			}
			r = policy.PortRange{First: uint16(v), Last: uint16(v)}
		case string:
			s = v
			var err error
			if r, err = parsePortRange(v); err != nil {
				p.errorf(e, "%s", err)
				continue
			}
		default:
			p.errorf(e, "%s entries must be strings like \"80\" or \"6881-6889\", got %s", n.name, describe(e.v))
			continue
		}
		entries = append(entries, entry{r, e, s, len(entries)})
	}
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.r.First, b.r.First), cmp.Compare(b.r.Last, a.r.Last))
	})
	// Sorted by first port, a range overlaps an earlier one exactly when it
	// starts at or below the highest last port so far.
	var reach *entry
	for i := range sorted {
		cur := &sorted[i]
		if reach == nil || cur.r.First > reach.r.Last {
			reach = cur
			continue
		}
		first, later := reach, cur
		if later.pos < first.pos {
			first, later = later, first
		}
		if first.r == later.r {
			p.errorf(later.node, "port %q is listed twice", later.s)
		} else {
			p.errorf(later.node, "ports %q overlap %q", later.s, first.s)
		}
		if cur.r.Last > reach.r.Last {
			reach = cur
		}
	}
	out := make([]policy.PortRange, len(entries))
	for i, e := range entries {
		out[i] = e.r
	}
	return out
}

func parsePortRange(s string) (policy.PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	if !isRange {
		last = first
	}
	a, errA := parsePort(first)
	b, errB := parsePort(last)
	switch {
	case errA != nil || errB != nil:
		return policy.PortRange{}, fmt.Errorf("port %q must be a port or range like \"80\" or \"6881-6889\", each 1..65535", s)
	case a > b:
		return policy.PortRange{}, fmt.Errorf("port range %q must not start above its end", s)
	}
	return policy.PortRange{First: a, Last: b}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil || v == 0 {
		return 0, errors.New("out of range")
	}
	return uint16(v), nil
}

// checkMatchers: a policy must say what it matches, and it must be able to
// match something. set holds the matcher keys the file sets.
func (p *parser) checkMatchers(t *table, set map[string]node) {
	if len(set) == 0 {
		p.errorf(t.node, "no matcher: give at least one of users, groups, services, sources, in_interfaces, destinations, domains, protocol, ports, source_ports (protocol = \"any\" matches all traffic)")
		return
	}
	_, local := set["users"]
	_, g := set["groups"]
	_, s := set["services"]
	local = local || g || s
	var fwd *node
	for _, name := range []string{"sources", "in_interfaces"} {
		if n, ok := set[name]; ok && (fwd == nil || n.line < fwd.line) {
			fwd = &n
		}
	}
	if local && fwd != nil {
		p.errorf(*fwd, "can never match: users/groups/services match the router's own traffic, sources/in_interfaces forwarded traffic")
	}
}

// policyUplinks reads a policy's candidate uplinks; cfg.Uplinks holds the
// uplinks whose names are valid.
func (p *parser) policyUplinks(n node, cfg *Config) []string {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	if len(elems) == 0 {
		p.errorf(n, "uplinks must not be empty: leave it out to use all uplinks")
		return nil
	}
	var known []string
	for _, u := range cfg.Uplinks {
		if u.Name != "" {
			known = append(known, u.Name)
		}
	}
	var out []string
	for _, e := range elems {
		s, ok := e.v.(string)
		switch {
		case !ok:
			p.errorf(e, "uplinks entries must be uplink names, got %s", describe(e.v))
		case !slices.Contains(known, s):
			msg := fmt.Sprintf("unknown uplink %q", s)
			if sug := suggest(s, known); sug != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", sug)
			}
			p.errorf(e, "%s", msg)
		case slices.Contains(out, s):
			p.errorf(e, "uplink %q is listed twice", s)
		default:
			out = append(out, s)
		}
	}
	return out
}

// suggest returns the candidate closest to a misspelt name, if one is close.
func suggest(name string, candidates []string) string {
	// Up to one edit in three characters: closer than that, it is a typo;
	// further, a suggestion would be a guess.
	best, bestDist := "", max(1, len(name)/3)+1
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance, in bytes: names are ASCII.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
