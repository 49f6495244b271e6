package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/adaptive"
	"github.com/wanpin/wanpin/pkg/dnslearn"
	"github.com/wanpin/wanpin/pkg/ifname"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/quota"

	"github.com/BurntSushi/toml"
)

// Parse parses and validates the policy file content data; path is used in
// messages only. When there is any problem it returns a nil Config and
// [Errors]: a syntax error alone, since nothing after it can be trusted, or
// else every problem found, sorted by line.
//
// The file is decoded into a generic tree rather than straight into structs:
// the library stops at the first type mismatch and positions it by a key
// path shared by all elements of an array of tables. Walking the tree gives
// every problem with its exact key, unknown keys included (which the
// library's MetaData.Undecoded would list without any position).
//
// Before the library sees it, the text is scanned for the limits of its
// shape (limits.go): a file that exceeds one is refused with the line
// where it did, without being parsed.
func Parse(path string, data []byte) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, Errors{{File: path, Msg: ErrTooLarge.Error()}}
	}
	ix, err := locate(data)
	if err != nil {
		var le *limitError
		if !errors.As(err, &le) {
			return nil, Errors{{File: path, Msg: err.Error()}}
		}
		return nil, Errors{{File: path, Line: le.line, Msg: le.msg}}
	}
	var tree map[string]any
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&tree); err != nil {
		return nil, Errors{syntaxError(path, data, err)}
	}
	p := &parser{file: path, ix: ix}
	cfg := p.config(tree)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b Error) int { return cmp.Compare(a.Line, b.Line) })
		return nil, p.errs
	}
	return cfg, nil
}

func syntaxError(path string, data []byte, err error) Error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return Error{File: path, Msg: err.Error()}
	}
	line := pe.Position.Line
	if line < 1 {
		// The library leaves the line 0 in a few cases (a "\r" before a
		// newline in a string); its byte offset is still right.
		start := min(max(pe.Position.Start, 0), len(data))
		line = 1 + bytes.Count(data[:start], []byte("\n"))
	}
	return Error{File: path, Line: line, Msg: "syntax error: " + pe.Message}
}

type parser struct {
	file string
	ix   lineIndex
	errs Errors
	// entries counts the policies' list entries so far, for
	// MaxPolicyEntries.
	entries int
}

// node is one value in the file with what is needed to report on it.
type node struct {
	v    any
	name string // the key's own name, for messages: "weight"
	path string // locator path: uplink[1].weight
	key  string // key shown to the admin: uplink[2].weight
	line int    // the key's line, or its element's header line if unknown
}

func (p *parser) errorf(n node, format string, args ...any) {
	p.errs = append(p.errs, Error{File: p.file, Line: n.line, Key: n.key, Msg: fmt.Sprintf(format, args...)})
}

// table is a TOML table being read field by field; keys not read are
// reported as unknown.
type table struct {
	node
	m    map[string]any
	read map[string]bool
}

func (p *parser) table(n node) *table {
	m, _ := n.v.(map[string]any)
	return &table{node: n, m: m, read: map[string]bool{}}
}

// field is the node for key name below t. A missing key gets t's line, so a
// "name is required" points at its [[uplink]] header.
func (p *parser) field(t *table, name string) node {
	n := node{v: t.m[name], name: name, path: joinKey(t.path, name), line: t.line}
	n.key = quoteKey(name)
	if t.key != "" {
		n.key = t.key + "." + n.key
	}
	if l := p.ix.line(n.path); l > 0 {
		n.line = l
	}
	return n
}

// oneOf reads n, a string that must be one of opts; anything else is
// reported, naming them all, and gives false.
func (p *parser) oneOf(n node, opts ...string) (string, bool) {
	s, ok := p.str(n)
	if !ok {
		return "", false
	}
	if slices.Contains(opts, s) {
		return s, true
	}
	quoted := make([]string, len(opts))
	for i, o := range opts {
		quoted[i] = strconv.Quote(o)
	}
	list := quoted[len(quoted)-1]
	if len(quoted) > 1 {
		list = strings.Join(quoted[:len(quoted)-1], ", ") + " or " + list
	}
	p.errorf(n, "%s must be %s, got %q", n.name, list, s)
	return "", false
}

// get returns the field name of t and whether the file sets it.
func (p *parser) get(t *table, name string) (node, bool) {
	t.read[name] = true
	_, ok := t.m[name]
	return p.field(t, name), ok
}

// unknown reports the keys of t that nothing read, in name order so the
// output is stable for keys on one line.
func (p *parser) unknown(t *table, known []string) {
	var names []string
	for name := range t.m {
		if !t.read[name] {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		msg := "unknown key"
		if s := suggest(name, known); s != "" {
			msg += " (did you mean " + s + "?)"
		}
		p.errorf(p.field(t, name), "%s", msg)
	}
}

// elements returns the entries of an array with a node each; the key stays
// the array's: messages quote the entry at fault.
func (p *parser) elements(n node, vs []any) []node {
	out := make([]node, len(vs))
	for i, v := range vs {
		out[i] = p.element(n, i, v)
	}
	return out
}

// element is the node of the i-th entry, v, of the array n.
func (p *parser) element(n node, i int, v any) node {
	e := n
	e.v = v
	e.path = joinIndex(n.path, i)
	if l := p.ix.line(e.path); l > 0 {
		e.line = l
	}
	return e
}

// list reads an array of plain values.
func (p *parser) list(n node) ([]node, bool) {
	vs, ok := n.v.([]any)
	if !ok {
		p.errorf(n, "%s must be an array, got %s", n.name, describe(n.v))
		return nil, false
	}
	return p.elements(n, vs), true
}

// tables reads an array of tables, written as [[name]] or inline.
func (p *parser) tables(n node) ([]node, bool) {
	var vs []any
	switch v := n.v.(type) {
	case []map[string]any:
		for _, m := range v {
			vs = append(vs, m)
		}
	case []any:
		vs = v
	case map[string]any:
		p.errorf(n, "%s must be an array of tables: write [[%s]], not [%s]", n.name, n.name, n.name)
		return nil, false
	default:
		p.errorf(n, "%s must be an array of tables ([[%s]]), got %s", n.name, n.name, describe(n.v))
		return nil, false
	}
	out := p.elements(n, vs)
	for i := range out {
		out[i].key = n.key + "[" + strconv.Itoa(i+1) + "]"
	}
	ok := true
	for _, e := range out {
		if _, isTable := e.v.(map[string]any); !isTable {
			p.errorf(e, "each %s entry must be a table, got %s", n.name, describe(e.v))
			ok = false
		}
	}
	return out, ok
}

func (p *parser) str(n node) (string, bool) {
	s, ok := n.v.(string)
	if !ok {
		p.errorf(n, "%s must be a string, got %s", n.name, describe(n.v))
	}
	return s, ok
}

// integer reads an integer and checks it is within lo..hi.
func (p *parser) integer(n node, lo, hi int64) (int64, bool) {
	v, ok := n.v.(int64)
	if !ok {
		p.errorf(n, "%s must be an integer, got %s", n.name, describe(n.v))
		return 0, false
	}
	if v < lo || v > hi {
		p.errorf(n, "%s must be %d..%d, got %d", n.name, lo, hi, v)
		return 0, false
	}
	return v, true
}

func (p *parser) boolean(n node) (bool, bool) {
	b, ok := n.v.(bool)
	if !ok {
		p.errorf(n, "%s must be true or false, got %s", n.name, describe(n.v))
	}
	return b, ok
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case []map[string]any:
		return "array of tables"
	case []any:
		return "array"
	case map[string]any:
		return "table"
	case time.Time:
		return "date/time"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// Keys of each table, in the order they are read (and documented).
var (
	topKeys = []string{"mark_mask", "rule_priority", "router_traffic", "lan_prefix6", "allow_conflicts", "sticky", "sticky_by",
		"domain_ttl_floor", "domain_nflog_group", "mptcp", "uplink", "policy"}
	uplinkKeys = []string{"name", "interface", "gateway", "gateway6", "dns", "weight", "tier", "table",
		"masquerade", "nat6", "prefix6", "health", "failback", "quota", "quota_period", "quota_reset_day", "quota_action",
		"bandwidth", "mptcp"}
	policyKeys = []string{"name", "users", "groups", "services", "sources", "in_interfaces",
		"destinations", "domains", "protocol", "ports", "source_ports", "uplinks", "fallback", "sticky", "sticky_by"}
)

func (p *parser) config(tree map[string]any) *Config {
	cfg := &Config{Path: p.file, MarkMask: DefaultMarkMask, RulePriority: DefaultRulePriority, RouterTraffic: RouterBalance,
		DomainTTLFloor: DefaultDomainTTLFloor, DomainNFLOGGroup: DefaultDomainNFLOGGroup}
	root := p.table(node{v: tree})

	mark, markSet := p.get(root, "mark_mask")
	markOK := true
	if markSet {
		cfg.MarkMask, markOK = p.markMask(mark)
	}
	if n, ok := p.get(root, "rule_priority"); ok {
		if v, ok := p.rulePriority(n); ok {
			cfg.RulePriority = v
		}
	}

	if n, ok := p.get(root, "router_traffic"); ok {
		if s, ok := p.oneOf(n, string(RouterBalance), string(RouterMain)); ok {
			cfg.RouterTraffic = RouterTraffic(s)
		}
	}

	if n, ok := p.get(root, "allow_conflicts"); ok {
		// Programs ("tailscale") or findings ("ip rule 5210") whose clash
		// with wanpin's marks or rules the admin accepts (pkg/neighbours).
		cfg.AllowConflicts = p.stringList(n, func(s string) error {
			if s == "" || len(s) > 128 {
				return fmt.Errorf("allow_conflicts entries are a program (\"tailscale\") or a finding's id (\"ip rule 5210\"), got %q", s)
			}
			return nil
		})
	}

	cfg.Sticky = p.sticky(root)

	if p.duration(root, "domain_ttl_floor", &cfg.DomainTTLFloor, false) &&
		(cfg.DomainTTLFloor < MinDomainTTLFloor || cfg.DomainTTLFloor > MaxDomainTTLFloor) {
		p.errorf(p.field(root, "domain_ttl_floor"), "domain_ttl_floor must be between 1s and 1h, got %s", cfg.DomainTTLFloor)
		cfg.DomainTTLFloor = DefaultDomainTTLFloor
	}
	if n, ok := p.get(root, "mptcp"); ok {
		if b, ok := p.boolean(n); ok {
			cfg.MPTCP = b
		}
	}
	if n, ok := p.get(root, "domain_nflog_group"); ok {
		if v, ok := p.integer(n, 1, 65535); ok {
			cfg.DomainNFLOGGroup = uint16(v)
		}
	}

	lan6, lan6Set := p.get(root, "lan_prefix6")
	if lan6Set {
		if s, ok := p.str(lan6); ok {
			pfx, err := parsePrefix6("lan_prefix6", s)
			if p.check(lan6, err) {
				cfg.LANPrefix6 = pfx
			}
		}
	}

	var uplinks []uplinkSrc
	if n, ok := p.get(root, "uplink"); ok {
		if elems, ok := p.tables(n); ok {
			if len(elems) > MaxUplinks {
				p.errorf(elems[MaxUplinks], "more than %d uplinks, the most wanpin takes", MaxUplinks)
			}
			for _, e := range elems {
				u, src := p.uplink(p.table(e))
				cfg.Uplinks = append(cfg.Uplinks, u)
				uplinks = append(uplinks, src)
			}
			if len(elems) == 0 {
				p.errorf(n, "no [[uplink]]: at least one is required")
			}
		}
	} else {
		p.errorf(node{key: "uplink"}, "no [[uplink]]: at least one is required")
	}
	for _, src := range uplinks {
		if src.mptcpOn != nil && !cfg.MPTCP {
			p.errorf(*src.mptcpOn, "mptcp on an uplink only opts out (mptcp = false) of mptcp = true at the top level")
		}
	}
	p.checkUplinks(cfg, uplinks)
	p.checkAutoWeights(cfg, uplinks)
	p.checkNat6(cfg, uplinks, lan6, lan6Set)
	if markOK {
		p.checkMarkRoom(cfg, mark, markSet, uplinks)
	}

	if n, ok := p.get(root, "policy"); ok {
		if elems, ok := p.tables(n); ok {
			if len(elems) > MaxPolicies {
				p.errorf(elems[MaxPolicies], "more than %d policies, the most wanpin takes", MaxPolicies)
			}
			names := map[string]int{}
			for i, e := range elems {
				cfg.Policies = append(cfg.Policies, p.policy(p.table(e), i, cfg, names))
			}
			p.checkPolicySets(cfg, elems)
		}
	}
	p.unknown(root, topKeys)
	return cfg
}

// uplinkSrc keeps where an uplink's keys are, for checks across uplinks.
type uplinkSrc struct {
	elem, name, iface, table node
	failback                 node // set when failback = "move"
	tableSet                 bool
	nat6, prefix6            node
	nat6Set, prefix6Set      bool
	mptcpOn                  *node // set when mptcp = true
	weight                   node
	weightSet                bool
}

func (p *parser) uplink(t *table) (Uplink, uplinkSrc) {
	u := Uplink{Weight: 1, Tier: 1, Masquerade: true, Nat6: Nat6Masquerade, Line: t.line}
	src := uplinkSrc{elem: t.node}

	var ok bool
	if src.name, ok = p.get(t, "name"); ok {
		if s, ok := p.str(src.name); ok && p.check(src.name, checkUplinkName(s)) {
			u.Name = s
		}
	} else {
		p.errorf(src.name, "name is required")
	}
	if src.iface, ok = p.get(t, "interface"); ok {
		if s, ok := p.str(src.iface); ok && p.check(src.iface, ifname.Check(s)) {
			u.Interface = s
		}
	} else {
		p.errorf(src.iface, "interface is required")
	}
	if n, ok := p.get(t, "gateway"); ok {
		if s, ok := p.str(n); ok {
			a, err := parseGateway("gateway", s, inet.IPv4)
			if p.check(n, err) {
				u.Gateway4 = a
			}
		}
	}
	if n, ok := p.get(t, "gateway6"); ok {
		if s, ok := p.str(n); ok {
			a, err := parseGateway("gateway6", s, inet.IPv6)
			if p.check(n, err) {
				u.Gateway6 = a
			}
		}
	}
	if n, ok := p.get(t, "dns"); ok {
		u.DNS = p.dnsServers(n)
	}
	weightOK := true
	if src.weight, src.weightSet = p.get(t, "weight"); src.weightSet {
		u.Weight, u.AutoWeight, weightOK = p.weight(src.weight)
	}
	if n, ok := p.get(t, "bandwidth"); ok {
		u.Bandwidth = p.bandwidth(n, u.AutoWeight || !weightOK)
	}
	if n, ok := p.get(t, "tier"); ok {
		if v, ok := p.integer(n, 1, MaxTier); ok {
			u.Tier = int(v)
		}
	}
	if src.table, src.tableSet = p.get(t, "table"); src.tableSet {
		if v, ok := src.table.v.(int64); !ok {
			p.errorf(src.table, "table must be an integer, got %s", describe(src.table.v))
		} else if p.check(src.table, checkTable(v)) {
			u.Table = int(v)
		}
	}
	if n, ok := p.get(t, "masquerade"); ok {
		if b, ok := p.boolean(n); ok {
			u.Masquerade = b
		}
	}
	if src.nat6, src.nat6Set = p.get(t, "nat6"); src.nat6Set {
		if s, ok := p.oneOf(src.nat6, string(Nat6Masquerade), string(Nat6None), string(Nat6Prefix)); ok {
			u.Nat6 = Nat6Mode(s)
		}
	}
	if src.prefix6, src.prefix6Set = p.get(t, "prefix6"); src.prefix6Set {
		if s, ok := p.str(src.prefix6); ok {
			pfx, err := parsePrefix6("prefix6", s)
			if p.check(src.prefix6, err) {
				u.Prefix6 = pfx
			}
		}
	}
	if n, ok := p.get(t, "mptcp"); ok {
		if b, ok := p.boolean(n); ok {
			u.NoMPTCP = !b
			if b {
				src.mptcpOn = &n
			}
		}
	}
	if n, ok := p.get(t, "health"); ok {
		u.Health = p.health(n)
	}
	if _, hasHealth := p.get(t, "health"); u.AutoWeight && !hasHealth {
		p.errorf(src.weight, `weight = "auto" needs [uplink.health]: a saturated uplink is seen by its probes' round trip rising`)
	}
	if n, ok := p.get(t, "failback"); ok {
		if s, ok := p.oneOf(n, string(FailbackKeep), string(FailbackMove)); ok && Failback(s) == FailbackMove {
			u.Failback, src.failback = FailbackMove, n
		}
	}
	u.Quota = p.quota(t)
	p.unknown(t, uplinkKeys)
	return u, src
}

// weight reads `weight`: an integer 1..MaxWeight, or "auto" (the
// weight follows what the uplink delivers: pkg/adaptive), which is
// weight 0 with auto set. ok is false when it was refused.
func (p *parser) weight(n node) (w int, auto, ok bool) {
	switch v := n.v.(type) {
	case string:
		if v == "auto" {
			return 0, true, true
		}
	case int64:
		if w, ok := p.integer(n, 1, MaxWeight); ok {
			return int(w), false, true
		}
		return 1, false, false
	}
	p.errorf(n, `weight must be an integer 1..%d or "auto", got %s`, MaxWeight, describe(n.v))
	return 1, false, false
}

// bandwidth reads `bandwidth = "100Mbit"`, the uplink's rate in bit/s
// for weight = "auto": where its estimate starts, and its cap. auto
// says whether the weight is auto (or unreadable: its own error says so).
func (p *parser) bandwidth(n node, auto bool) uint64 {
	s, isStr := n.v.(string)
	if !isStr {
		p.errorf(n, `bandwidth must be a rate with a unit, e.g. "100Mbit" (units %s), got %s`, adaptive.UnitNames, describe(n.v))
		return 0
	}
	v, err := adaptive.ParseBandwidth(s)
	if !p.check(n, err) {
		return 0
	}
	if !auto {
		p.errorf(n, `bandwidth needs weight = "auto": it is where the adaptive weight starts and its cap`)
		return 0
	}
	return v
}

// quota reads an uplink's quota keys: quota = "20GB" and, with it, its
// period, reset day and action.
func (p *parser) quota(t *table) *Quota {
	q := &Quota{Period: quota.Monthly, ResetDay: 1, Action: QuotaLastResort}
	n, set := p.get(t, "quota")
	ok := set
	if set {
		if s, isStr := n.v.(string); !isStr {
			p.errorf(n, `quota must be a size with a unit, e.g. "20GB" (units %s), got %s`, quota.UnitNames, describe(n.v))
			ok = false
		} else if v, err := quota.ParseSize(s); p.check(n, err) {
			q.Limit = v
		} else {
			ok = false
		}
	}
	// The other keys mean nothing without a quota: say so rather than
	// ignore them.
	needs := func(name string) (node, bool) {
		k, has := p.get(t, name)
		if has && !set {
			p.errorf(k, "%s needs quota (e.g. quota = \"20GB\")", name)
			return k, false
		}
		return k, has
	}
	period, periodSet := needs("quota_period")
	if periodSet {
		if s, valid := p.oneOf(period, string(quota.Monthly), string(quota.Daily)); valid {
			q.Period = quota.Period(s)
		} else {
			ok = false
		}
	}
	if k, has := needs("quota_reset_day"); has {
		if v, isInt := p.integer(k, 1, 31); !isInt {
			ok = false
		} else if q.Period == quota.Daily {
			p.errorf(k, `quota_reset_day is for quota_period = "monthly": a daily quota starts again every midnight`)
			ok = false
		} else {
			q.ResetDay = int(v)
		}
	}
	if k, has := needs("quota_action"); has {
		if s, valid := p.oneOf(k, string(QuotaLastResort), string(QuotaOff)); valid {
			q.Action = QuotaAction(s)
		} else {
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return q
}

// check reports err, if any, at n, and tells whether there was none.
func (p *parser) check(n node, err error) bool {
	if err != nil {
		p.errorf(n, "%s", err)
		return false
	}
	return true
}

// policy reads the i-th [[policy]]. names maps the policy names seen so far
// to their line.
func (p *parser) policy(t *table, i int, cfg *Config, names map[string]int) Policy {
	pol := Policy{Line: t.line}

	// The name comes first: it labels every other message of this policy.
	t.key = "policy[" + strconv.Itoa(i+1) + "]"
	if n, ok := p.get(t, "name"); !ok {
		p.errorf(n, "name is required")
	} else if s, ok := p.str(n); ok && p.check(n, checkPolicyName(s)) {
		// Only a valid name labels: an invalid one may hold anything.
		t.key = "policy " + strconv.Quote(s)
		n = p.field(t, "name")
		pol.Name = s
		if first, dup := names[s]; dup {
			p.errorf(n, "duplicate policy name %q (first at line %d)", s, first)
		} else {
			names[s] = n.line
		}
	}

	// Matchers: which ones the file sets, even with bad values, so that a
	// bad value is not also reported as a missing matcher.
	set := map[string]node{}
	entries := 0
	matcher := func(name string) (node, bool) {
		n, ok := p.get(t, name)
		if !ok {
			return n, false
		}
		set[name] = n
		p.countEntries(n, &entries)
		if vs, isList := n.v.([]any); isList && len(vs) == 0 {
			p.errorf(n, "%s must not be empty: leave it out to match anything", name)
			return n, false
		}
		return n, true
	}
	if n, ok := matcher("users"); ok {
		pol.UIDs = p.ids(n, lookupUser)
	}
	if n, ok := matcher("groups"); ok {
		pol.GIDs = p.ids(n, lookupGroup)
	}
	if n, ok := matcher("services"); ok {
		pol.Services = p.stringList(n, checkService)
	}
	if n, ok := matcher("sources"); ok {
		pol.Sources = p.prefixes(n)
	}
	if n, ok := matcher("in_interfaces"); ok {
		pol.InInterfaces = p.stringList(n, ifname.Check)
	}
	if n, ok := matcher("destinations"); ok {
		pol.Destinations = p.prefixes(n)
	}
	if n, ok := matcher("domains"); ok {
		pol.Domains = p.domains(n)
		if _, both := set["destinations"]; both {
			p.errorf(n, "domains and destinations in one policy would match only addresses both listed and learned: give each its own policy")
		}
	}
	if n, ok := matcher("protocol"); ok {
		if s, ok := p.str(n); ok {
			proto, err := parseProtocol(s)
			if p.check(n, err) {
				pol.Protocol = proto
			}
		}
	}
	if n, ok := matcher("ports"); ok {
		pol.Ports = p.ports(n)
	}
	if n, ok := matcher("source_ports"); ok {
		pol.SourcePorts = p.ports(n)
	}
	p.checkMatchers(t, set)

	if n, ok := p.get(t, "uplinks"); ok {
		p.countEntries(n, &entries)
		pol.Uplinks = p.policyUplinks(n, cfg)
	}
	if n, ok := p.get(t, "fallback"); ok {
		if s, ok := p.oneOf(n, "any", "none"); ok {
			pol.FallbackNone = s == "none"
		}
	}
	pol.Sticky = p.sticky(t)
	p.unknown(t, policyKeys)
	return pol
}

// domains reads a policy's domains, normalised (Example.COM. and
// example.com are one domain).
func (p *parser) domains(n node) []string {
	return p.normalList(n, func(s string) (string, error) {
		d, err := dnslearn.NormaliseDomain(s)
		if err != nil {
			return "", fmt.Errorf("%q is not a domain name: %v", s, err)
		}
		return d, nil
	})
}

// sticky reads `sticky` and `sticky_by` of the table t.
func (p *parser) sticky(t *table) Sticky {
	var st Sticky
	if p.duration(t, "sticky", &st.Timeout, false) && st.Timeout != 0 {
		if st.Timeout < MinSticky || st.Timeout > MaxSticky {
			p.errorf(p.field(t, "sticky"), "sticky must be between 1s and 168h (7 days), got %s", st.Timeout)
			st.Timeout = 0
		}
	}
	if n, ok := p.get(t, "sticky_by"); ok {
		if s, ok := p.oneOf(n, "source", "source+destination"); ok {
			st.ByDestination = s == "source+destination"
			if _, set := p.get(t, "sticky"); !set {
				p.errorf(n, "sticky_by needs sticky (a duration like \"10m\")")
			}
		}
	}
	return st
}

// countEntries counts the entries of a policy's list n towards the
// policy's own (inPolicy) and all policies' entries, and reports the entry
// that goes over either limit.
func (p *parser) countEntries(n node, inPolicy *int) {
	vs, ok := n.v.([]any)
	if !ok {
		return
	}
	before, allBefore := *inPolicy, p.entries
	*inPolicy += len(vs)
	p.entries += len(vs)
	if before <= MaxEntriesPerPolicy && *inPolicy > MaxEntriesPerPolicy {
		i := MaxEntriesPerPolicy - before
		p.errorf(p.element(n, i, vs[i]),
			"more than %d entries in one policy (its users, groups, services, sources, in_interfaces, destinations, domains, ports, source_ports and uplinks together), the most wanpin takes",
			MaxEntriesPerPolicy)
	}
	if allBefore <= MaxPolicyEntries && p.entries > MaxPolicyEntries {
		i := MaxPolicyEntries - allBefore
		p.errorf(p.element(n, i, vs[i]), "more than %d entries in all policies together, the most wanpin takes", MaxPolicyEntries)
	}
}

// stringList reads an array of distinct strings, each checked by check.
func (p *parser) stringList(n node, check func(string) error) []string {
	return p.normalList(n, func(s string) (string, error) { return s, check(s) })
}

// normalList reads an array of strings, each normalised by norm (whose
// error says what is wrong with it), distinct once normalised.
func (p *parser) normalList(n node, norm func(string) (string, error)) []string {
	elems, ok := p.list(n)
	if !ok {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range elems {
		raw, ok := e.v.(string)
		if !ok {
			p.errorf(e, "%s entries must be strings, got %s", n.name, describe(e.v))
			continue
		}
		s, err := norm(raw)
		if !p.check(e, err) {
			continue
		}
		if seen[s] {
			p.errorf(e, "%q is listed twice", s)
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	return out
}
