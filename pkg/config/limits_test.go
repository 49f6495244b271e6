package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loadWithin runs Load in the background and fails the test if it has not
// returned within a deadline far above what it needs (a hang is what is
// tested, not speed): it returns the error and how long Load took.
func loadWithin(t *testing.T, path string) (time.Duration, error) {
	t.Helper()
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		cfg, err := Load(path)
		done <- result{cfg, err}
	}()
	select {
	case r := <-done:
		took := time.Since(start)
		if r.err == nil {
			t.Fatalf("Load(%s) accepted it: %+v", path, r.cfg)
		}
		return took, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Load(%s) still running after 10 s", path)
	}
	panic("unreachable")
}

// What is not a regular file is refused at once, naming the file and what
// it is: reading a FIFO would wait for a writer, /dev/zero never ends.
func TestLoadRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zeroLink := filepath.Join(dir, "zero.toml")
	if err := os.Symlink("/dev/zero", zeroLink); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link.toml")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir.toml")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.toml")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct{ path, what string }{
		{fifo, "a named pipe (FIFO)"},
		{fifoLink, "a named pipe (FIFO)"},
		{"/dev/zero", "a character device"},
		{zeroLink, "a character device"},
		{sub, "a directory"},
		{sock, "a socket"},
	} {
		took, err := loadWithin(t, c.path)
		t.Logf("%s: %v in %v", c.path, err, took)
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.path) || !strings.HasSuffix(err.Error(), c.what) {
			t.Errorf("%s: got %v, want ErrNotRegular naming the file and saying it is %s", c.path, err, c.what)
		}
	}
}

// A FIFO put in place of the file after it was checked: opening it does
// not wait for a writer, and what was opened is refused.
func TestReadRegularRefusesFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := readRegular(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("got %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opening the FIFO blocked")
	}
}

func TestLoadTooLarge(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.toml")
	// Sparse: no disk is used.
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	took, err := loadWithin(t, big)
	t.Logf("%v in %v", err, took)
	var pe *fs.PathError
	if !errors.Is(err, ErrTooLarge) || !errors.As(err, &pe) || pe.Path != big {
		t.Errorf("got %v, want ErrTooLarge naming the file", err)
	}
	// At the limit, it is read (and then refused for what it holds).
	if err := os.Truncate(big, MaxFileSize); err != nil {
		t.Fatal(err)
	}
	if data, err := readFile(big); err != nil || len(data) != MaxFileSize {
		t.Errorf("at the limit: %d bytes, %v", len(data), err)
	}
	if _, err := Parse("p.toml", make([]byte, MaxFileSize+1)); err == nil || !strings.Contains(err.Error(), ErrTooLarge.Error()) {
		t.Errorf("Parse of more than the limit: %v", err)
	}
}

// bomb is a file whose shape exceeds a limit: it must be refused at the
// line given, with a message naming the limit, before the TOML library
// gets it.
type bomb struct {
	name string
	text string
	line int
	msg  string
}

func bombs() []bomb {
	deep := func(open, close string, n int) string {
		return "k = " + strings.Repeat(open, n) + strings.Repeat(close, n) + "\n"
	}
	many := func(format string, n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, format, i)
		}
		return b.String()
	}
	return []bomb{
		// The attacks as measured: each took the process past 4 GB.
		{"100k nested arrays", deep("[", "]", 100000), 1, fmt.Sprintf("nesting deeper than %d levels", MaxDepth)},
		{"100k nested inline tables", "k = " + strings.Repeat("{a=", 100000) + "1" + strings.Repeat("}", 100000) + "\n",
			1, fmt.Sprintf("nesting deeper than %d levels", MaxDepth)},
		{"20,000 dotted keys", "# a header\n" + strings.Repeat("a.", 20000) + "b = 1\n", 2, fmt.Sprintf("a key of more than %d dotted parts", MaxDepth)},
		{"40 KB header", "[" + strings.Repeat("a.", 20000) + "b]\n", 1, fmt.Sprintf("a key of more than %d dotted parts", MaxDepth)},
		// Just over each limit.
		{"nested arrays", "a = 1\n" + deep("[", "]", MaxDepth+1), 2, "nesting deeper"},
		{"nested inline tables", "a = 1\nk = " + strings.Repeat("{a=", MaxDepth) + "1" + strings.Repeat("}", MaxDepth) + "\n", 2, "nesting deeper"},
		{"header and dotted key", "[" + strings.Repeat("t.", MaxDepth/2) + "t]\n\n" + strings.Repeat("k.", MaxDepth/2) + "k = 1\n", 3, "nesting deeper"},
		{"arrays of tables", nestedArraysOfTables(MaxDepth/2 + 1), MaxDepth/2 + 1, "nesting deeper"},
		{"dotted key", strings.Repeat("k.", MaxDepth) + "k = 1\n", 1, "dotted parts"},
		{"long key", strings.Repeat("k", MaxKeyPath+1) + " = 1\n", 1, fmt.Sprintf("longer than %d bytes", MaxKeyPath)},
		{"long key path", "[" + strings.Repeat("t", MaxKeyPath/2) + "]\n" + strings.Repeat("k", MaxKeyPath/2) + " = 1\n", 2, "full name"},
		{"long quoted key", `"` + strings.Repeat(`\u0041`, MaxKeyPath+1) + `" = 1` + "\n", 1, "full name"},
		{"tables", many("t%d = {}\n", maxTables+1), maxTables + 1, fmt.Sprintf("more than %d tables", maxTables)},
		{"table headers", many("[[t]] # %d\n", maxTables+1), maxTables + 1, fmt.Sprintf("more than %d tables", maxTables)},
		{"keys", many("k%d = 1\n", maxKeys+1), maxKeys + 1, fmt.Sprintf("more than %d keys", maxKeys)},
		{"dotted keys", many("k%d.a.b.c = 1\n", maxKeys/4+1), maxKeys/4 + 1, fmt.Sprintf("more than %d keys", maxKeys)},
		{"array entries", "k = [\n" + strings.Repeat("1,\n", maxValues+1) + "]\n", maxValues + 2, fmt.Sprintf("more than %d array entries", maxValues)},
		{"lines", strings.Repeat("\n", MaxLines) + "x", MaxLines + 1, fmt.Sprintf("more than %d lines", MaxLines)},
		{"blank lines", strings.Repeat("\n", MaxFileSize-2) + "x\n", MaxLines + 1, fmt.Sprintf("more than %d lines", MaxLines)},
		{"policies", "[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\n" + many("[[policy]]\nname = \"p%d\"\nprotocol = \"tcp\"\n", 100001),
			4 + 3*(maxTables-1), fmt.Sprintf("more than %d tables", maxTables)},
	}
}

func TestShapeLimits(t *testing.T) {
	for _, b := range bombs() {
		t.Run(b.name, func(t *testing.T) {
			data := []byte(b.text)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := Parse("bomb.toml", data)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes: refused in %v, %.1f MB allocated: %v", len(data), took, float64(alloc)/1e6, err)
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("got %v, want one error", err)
			}
			if e := errs[0]; e.Line != b.line || !strings.Contains(e.Msg, b.msg) {
				t.Errorf("got %v, want line %d saying %q", e, b.line, b.msg)
			}
			// The library's memory, not the scan's, is what grows with
			// these: the scan stops early and keeps little.
			if alloc > 64<<20 {
				t.Errorf("%.1f MB allocated to refuse it", float64(alloc)/1e6)
			}
		})
	}
}

// Just within the limits of the shape, files pass the scan: it is the
// semantic checks that say what is wrong with them.
func TestShapeWithinLimits(t *testing.T) {
	for name, text := range map[string]string{
		"nested arrays":         "k = " + strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth) + "\n",
		"arrays of tables":      nestedArraysOfTables(MaxDepth / 2),
		"nested inline tables":  "k = " + strings.Repeat("{a=", MaxDepth-1) + "1" + strings.Repeat("}", MaxDepth-1) + "\n",
		"dotted key":            strings.Repeat("k.", MaxDepth-1) + "k = 1\n",
		"long key":              strings.Repeat("k", MaxKeyPath) + " = 1\n",
		"lines":                 strings.Repeat("\n", MaxLines-1) + "x = 1",
		"lines, the last ended": strings.Repeat("\n", MaxLines-1) + "x = 1\n",
		"array entries":         "k = [" + strings.Repeat("1,", maxValues) + "]\n",
		// What looks like structure inside strings and comments is none.
		"strings and comments": "# [[[[" + strings.Repeat("[{", 1000) + "\n" +
			`a = "` + strings.Repeat(`[{\"`, 1000) + `"` + "\n" +
			`b = '` + strings.Repeat(`[{"\`, 1000) + `'` + "\n" +
			`c = """` + "\n" + strings.Repeat("[[x]]\n[{a.b.c = 1 # ]]\n\\\"\"\"\n", 1000) + `"""` + "\n" +
			`d = '''` + "\n" + strings.Repeat("[[x]]\n[{a.b.c = 1\n''", 1000) + `'''` + "\n" +
			`e = [ "]]]", '}}}', """[[[""", '''{{{''', # ]]]` + "\n] # [[[\n" +
			`"f.g.h" = 1` + "\n" + `'i.j.k' = { "l.m" = 1 }` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			sc, err := scan([]byte(text))
			if err != nil {
				t.Fatalf("scan refused it: %v", err)
			}
			if _, err := Parse("ok.toml", []byte(text)); err == nil || strings.Contains(err.Error(), "syntax error") {
				t.Errorf("want semantic errors only: %v", err)
			}
			t.Logf("depth %d, %d tables, %d key parts, %d array entries", sc.depth, sc.tables, sc.keyParts, sc.values)
		})
	}
}

// nestedArraysOfTables is [[a]], [[a.a]]... n deep: each level is a key
// and an element, 2n levels.
func nestedArraysOfTables(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("[[" + strings.Repeat("a.", i) + "a]]\n")
	}
	return b.String()
}

// uplinkText is the i-th uplink with every key set, its health table
// written as dotted keys (the most key parts an uplink can have), with
// nDNS resolvers and nTargets targets.
func uplinkText(i, nDNS, nTargets int) string {
	var dns, targets []string
	for j := range nDNS {
		dns = append(dns, fmt.Sprintf(`"2001:db8:53::%x"`, j+1))
	}
	for j := range nTargets {
		targets = append(targets, fmt.Sprintf(`"192.0.2.%d"`, j+1))
	}
	return fmt.Sprintf(`[[uplink]]
name = "u%d"
interface = "wan%d"
gateway = "192.0.2.%d"
gateway6 = "fe80::%x"
dns = [%s]
weight = 1
tier = 1
table = %d
masquerade = true
nat6 = "masquerade"
prefix6 = "2001:db8:%x::/48"
health.method = "icmp"
health.targets = [%s]
health.dns_name = "."
health.interval = "1s"
health.timeout = "500ms"
health.down_after = 2
health.up_after = 3
health.quorum = %d
health.max_loss = 50
health.max_rtt = "400ms"
health.window = 10
health.hold_down = "2s"
`, i, i, i+1, i+1, strings.Join(dns, ", "), 100+i, i, strings.Join(targets, ", "), min(nTargets, MaxHealthTargets))
}

// largestValid is a file at every limit at once: MaxUplinks uplinks with
// every key, MaxPolicies policies with as many keys as a policy can have,
// and MaxPolicyEntries entries in the longest form there is (full IPv6
// addresses), MaxEntriesPerPolicy in the first policies.
func largestValid() string {
	var b strings.Builder
	b.WriteString("mark_mask = 0x00ff0000\nrule_priority = 10000\nrouter_traffic = \"balance\"\nlan_prefix6 = \"fd00:1::/64\"\n")
	for i := range MaxUplinks {
		b.WriteString(uplinkText(i, MaxDNS, MaxHealthTargets))
	}
	entries := 0
	for i := range MaxPolicies {
		// The router's own traffic: users, groups and services go with
		// destinations, ports and source ports (sources and in_interfaces
		// would make it a forwarding policy, which cannot have them).
		fmt.Fprintf(&b, "[[policy]]\nname = \"p%030d\"\nusers = [\"0\"]\ngroups = [\"0\"]\nservices = [\"user.slice\"]\nprotocol = \"tcp\"\nports = [\"%d\"]\nsource_ports = [\"1-1024\"]\nuplinks = [\"u0\"]\nfallback = \"none\"\ndestinations = [\n",
			i, i%65535+1)
		entries += 6
		// Each policy after this one needs 6 entries and a destination.
		n := max(1, min(MaxEntriesPerPolicy-6, MaxPolicyEntries-entries-7*(MaxPolicies-i-1)))
		for j := range n {
			fmt.Fprintf(&b, "  \"2001:0db8:%04x:%04x:%04x:ffff:ffff:ffff/128\",\n", i, j>>16, j&0xffff)
		}
		entries += n
		b.WriteString("]\n")
	}
	return b.String()
}

// The largest valid file passes every limit: the shape limits derived
// from the semantic ones are enough for it, and MaxFileSize holds it.
func TestLargestValidFile(t *testing.T) {
	if testing.Short() {
		t.Skip("parses a file of 200,000 entries")
	}
	text := largestValid()
	if len(text) > MaxFileSize {
		t.Fatalf("the largest valid file takes %d bytes, more than MaxFileSize %d", len(text), MaxFileSize)
	}
	sc, err := scan([]byte(text))
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	t.Logf("%d bytes (%.0f%% of MaxFileSize), %d lines: depth %d, %d tables of %d, %d key parts of %d, %d array entries of %d",
		len(text), 100*float64(len(text))/MaxFileSize, strings.Count(text, "\n"),
		sc.depth, sc.tables, maxTables, sc.keyParts, maxKeys, sc.values, maxValues)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	cfg, err := Parse("largest.toml", []byte(text))
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		s := err.Error()
		t.Fatalf("refused: %s", s[:min(len(s), 2000)])
	}
	n := 0
	for _, p := range cfg.Policies {
		n += len(p.Destinations) + len(p.UIDs) + len(p.GIDs) + len(p.Services) + len(p.Ports) + len(p.SourcePorts) + len(p.Uplinks)
	}
	t.Logf("parsed in %v, %.0f MB allocated", took, float64(after.TotalAlloc-before.TotalAlloc)/1e6)
	if len(cfg.Uplinks) != MaxUplinks || len(cfg.Policies) != MaxPolicies || n != MaxPolicyEntries {
		t.Errorf("%d uplinks, %d policies, %d entries", len(cfg.Uplinks), len(cfg.Policies), n)
	}
}

// Each semantic limit, by one over it: refused at the first item too many,
// with the limit's number in the message.
func TestLimits(t *testing.T) {
	uplinks := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "[[uplink]]\nname = \"u%d\"\ninterface = \"wan%d\"\n", i, i)
		}
		return b.String()
	}
	policies := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "[[policy]]\nname = \"p%d\"\nprotocol = \"tcp\"\n", i)
		}
		return b.String()
	}
	// setPolicies: n policies of a list and a protocol, a kernel set each.
	setPolicies := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "[[policy]]\nname = \"p%d\"\nprotocol = \"tcp\"\ndestinations = [\"2001:db8::%x:1\", \"2001:db8::%x:3\"]\n", i, i, i)
		}
		return b.String()
	}
	// dests is a list of n addresses, one a line, counted from base.
	dests := func(key string, base, n int) string {
		var b strings.Builder
		b.WriteString(key + " = [\n")
		for i := base; i < base+n; i++ {
			fmt.Fprintf(&b, "  \"2001:db8::%x:%x\",\n", i>>16, i&0xffff)
		}
		b.WriteString("]\n")
		return b.String()
	}
	one := uplinks(1) // 3 lines
	for _, c := range []struct {
		name, text string
		line       int
		key, msg   string
	}{
		{"uplinks", uplinks(MaxUplinks + 1), 3*MaxUplinks + 1, fmt.Sprintf("uplink[%d]", MaxUplinks+1),
			fmt.Sprintf("more than %d uplinks", MaxUplinks)},
		{"policies", one + policies(MaxPolicies+1), 4 + 3*MaxPolicies, fmt.Sprintf("policy[%d]", MaxPolicies+1),
			fmt.Sprintf("more than %d policies", MaxPolicies)},
		{"entries of a policy", one + "[[policy]]\nname = \"p\"\nprotocol = \"tcp\"\n" + dests("destinations", 0, MaxEntriesPerPolicy+1),
			8 + MaxEntriesPerPolicy, `policy "p".destinations`, fmt.Sprintf("more than %d entries in one policy", MaxEntriesPerPolicy)},
		{"entries of all policies",
			one + "[[policy]]\nname = \"p\"\n" + dests("destinations", 0, MaxEntriesPerPolicy) +
				"[[policy]]\nname = \"q\"\n" + dests("destinations", MaxEntriesPerPolicy, MaxPolicyEntries-MaxEntriesPerPolicy) +
				"[[policy]]\nname = \"r\"\nprotocol = \"udp\"\nsources = [\"192.0.2.1\"]\n",
			3 + 4 + MaxEntriesPerPolicy + 4 + MaxPolicyEntries - MaxEntriesPerPolicy + 4, `policy "r".sources`,
			fmt.Sprintf("more than %d entries in all policies", MaxPolicyEntries)},
		{"kernel sets", one + setPolicies(MaxPolicySets+1), 3 + 4*MaxPolicySets + 1, fmt.Sprintf("policy[%d]", MaxPolicySets+1),
			fmt.Sprintf("needs kernel set %d of %d; wanpin takes at most %d", MaxPolicySets+1, MaxPolicySets+1, MaxPolicySets)},
		{"dns", uplinkText(0, MaxDNS+1, 1), 6, "uplink[1].dns", fmt.Sprintf("more than %d dns servers", MaxDNS)},
		{"health targets", uplinkText(0, 1, MaxHealthTargets+1), 14, "uplink[1].health.targets", fmt.Sprintf("more than %d targets", MaxHealthTargets)},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := Parse("l.toml", []byte(c.text))
			t.Logf("refused in %v", time.Since(start))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("got %v, want one error", err)
			}
			if e := errs[0]; e.Line != c.line || e.Key != c.key || !strings.Contains(e.Msg, c.msg) {
				t.Errorf("got %v, want line %d, key %s, saying %q", e, c.line, c.key, c.msg)
			}
		})
	}
}
