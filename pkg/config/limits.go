package config

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
	MaxEntriesPerPolicy = 100000
	// MaxPolicyEntries is the most entries of all policies together,
	// counted as for MaxEntriesPerPolicy.
	MaxPolicyEntries = 200000
	// MaxHealthTargets is the most targets an uplink's health checks
	// probe: as many as the largest quorum. Every target costs a probe a
	// round.
	MaxHealthTargets = 64
	// MaxDNS is the most resolvers an uplink may list.
	MaxDNS = 16

	// MaxFileSize is the largest policy file read. The file must be able to
	// hold what the limits above allow: MaxPolicyEntries destinations in
	// the longest IPv6 form take 9.6 MB, and a policy's header, name and
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
	// entry or key a line, has 262,000. Line breaks cost little to scan,
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
