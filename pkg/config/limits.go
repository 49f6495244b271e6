package config

import (
	"slices"

	"github.com/wanpin/wanpin/pkg/policy"
)

// Limits of the policy file, all in one place. Each one is checked with a
// file:line error that names it, so that no file can make `wanpin check`,
// `wanpin run` or a reload hang, run out of memory or take the daemon
// longer to apply than its targets allow. Tests read these constants:
// change one here and its tests follow.
//
// There are two kinds:
//
//   - What the daemon takes: uplinks, policies and their entries. These
//     are the numbers the daemon is measured to apply within its targets;
//     raise them only with measurements (docs/benchmarks.md).
//   - What the text may hold before the TOML library reads it: the file's
//     size, how deep values nest, how long keys get, and how many tables,
//     keys and array entries there are. The library's memory grows with
//     the square of a key's dotted parts and of nesting, and by hundreds of
//     bytes per table, key and entry: a 200 KB file of nested arrays or a
//     40 KB header of 20,000 dotted keys took more than 4 GB. The counts
//     are derived from the limits above, so every file those allow passes,
//     and a file refused for its shape is one the checks after parsing
//     would refuse anyway, only later and at far greater cost.
const (
	// MaxUplinks is the most uplinks a file may configure.
	MaxUplinks = 64
	// MaxPolicies is the most [[policy]] tables a file may hold.
	MaxPolicies = 10000
	// MaxEntriesPerPolicy is the most entries of one policy: the items of
	// all its lists together (users, groups, services, sources,
	// in_interfaces, destinations, ports, source_ports, uplinks).
	MaxEntriesPerPolicy = 50000
	// MaxPolicyEntries is the most entries of all policies together,
	// counted as for MaxEntriesPerPolicy. 10,000 policies of 10
	// destinations each, folded into one map of 100,000 ranges, apply in
	// about 0.9 s (BenchmarkManyPolicies/limit-entries); an apply's cost
	// grows with the entries, some 9 µs each, most of it building and
	// sending the kernel's elements.
	MaxPolicyEntries = 100000
	// MaxPolicySets is the most kernel sets the policies may need: a list
	// of several values in a policy that tests another key too (20
	// destinations and a port) is a set of its own, looked up by its rule.
	// (Policies of one key fold into shared maps and need none.) The
	// kernel finds a set by name walking all of the table's sets, for
	// every set, element batch and rule that names one: 10,000 such sets
	// took 9.8 s to apply, 1,000 in 10,000 policies of two keys 0.8 s
	// (BenchmarkManyPolicies/limit-sets).
	MaxPolicySets = 1000
	// MaxHealthTargets is the most targets an uplink's health checks
	// probe: as many as the largest quorum. Every target costs a probe a
	// round.
	MaxHealthTargets = 64
	// MaxDNS is the most resolvers an uplink may list.
	MaxDNS = 16

	// MaxFileSize is the largest policy file read. The file must be able to
	// hold what the limits above allow: MaxPolicyEntries destinations in
	// the longest IPv6 form take 4.8 MB, and a policy's header, name and
	// keys some 100 bytes more each. Reading, copying and decoding text
	// costs a few bytes of memory per byte of it; the shape limits below
	// bound the rest.
	MaxFileSize = 16 << 20
	// MaxDepth is the deepest nesting of tables, arrays and dotted keys,
	// counted as the parts of a key's full path: uplink[2].health.targets[1]
	// is 5 deep, the deepest path of a valid file.
	MaxDepth = 16
	// MaxKeyPath is the longest full name of a key in bytes: the names of
	// its table, of the inline tables around it and its own, as in
	// uplink[2].health.interval. Valid keys stay under 40 bytes.
	//
	// The library spends memory on every key in proportion to its full
	// path: with a depth of 32 and paths of 256 bytes, a 1 MB file of keys
	// inside 30 nested inline tables took 357 MB and 2 s to parse; with 16
	// and 128, 213 MB and 0.8 s, what the largest valid file costs.
	MaxKeyPath = 128
	// MaxLines is the most lines of a file: the largest valid file, one
	// entry or key a line, has 162,000. Line breaks cost little to scan,
	// but on a syntax error the library splits the whole text into lines,
	// 16 bytes a line: 15 MB of them took 320 MB and 1.6 s.
	MaxLines = 1000000
)

// Derived limits of the file's shape: the most a file within the limits
// above can hold, however it is written ([[policy]] or policy = [{...}],
// [uplink.health] or health.interval = ...). They follow the limits above
// when those are changed.
var (
	// maxTables counts table headers and inline tables: an uplink and its
	// health table, and a policy.
	maxTables = 2*MaxUplinks + MaxPolicies
	// maxKeys counts every part of every key, in headers and in key/value
	// pairs: a dotted key makes a table of each of its parts.
	maxKeys = len(topKeys) +
		MaxUplinks*(1+len(uplinkKeys)+2*len(healthKeys)) + // [[uplink]], its keys, health.<key> = ...
		MaxPolicies*(1+len(policyKeys)) // [[policy]] and its keys
	// maxValues counts array entries: the policies' entries, the uplinks'
	// resolvers and targets, and tables written inline in an array.
	maxValues = MaxPolicyEntries + MaxPolicies + MaxUplinks*(1+MaxDNS+MaxHealthTargets)
)

// checkPolicySets refuses policies that need more than MaxPolicySets
// kernel sets of their own, at the policy whose set is one too many. It
// counts as pkg/rules lays the policies out (policy.Compile and Build):
// the sets that rules still look up once runs of one-key policies are
// folded into maps. A service counts as running, resolved to a cgroup of
// its own.
func (p *parser) checkPolicySets(cfg *Config, elems []node) {
	if len(cfg.Policies) == 0 || len(elems) < len(cfg.Policies) {
		return
	}
	comps := make([]policy.Compiled, len(cfg.Policies))
	for i, pol := range cfg.Policies {
		m := pol.Match
		m.Cgroups = nil
		for j := range m.Services {
			m.Cgroups = append(m.Cgroups, policy.CgroupMatch{Level: 2, ID: uint64(j + 1)})
		}
		comps[i] = policy.Compile(pol.Name, m)
	}
	first := map[*policy.Set]int{} // each set, by the policy that needs it
	for _, prog := range policy.Build(comps) {
		for _, it := range prog {
			if it.Map != nil {
				continue
			}
			for _, c := range it.Rule.Conds {
				if c.Set != nil && c.Set.Name != "" {
					if _, ok := first[c.Set]; !ok {
						first[c.Set] = it.Policy
					}
				}
			}
		}
	}
	if len(first) <= MaxPolicySets {
		return
	}
	at := make([]int, 0, len(first))
	for _, i := range first {
		at = append(at, i)
	}
	slices.Sort(at)
	i := at[MaxPolicySets]
	p.errorf(elems[i], "needs kernel set %d of %d; wanpin takes at most %d: "+
		"a list of several values in a policy that tests another key too is a set of its own, "+
		"while policies of one key each (a destination, a source, a user...) share maps and need none",
		MaxPolicySets+1, len(first), MaxPolicySets)
}
