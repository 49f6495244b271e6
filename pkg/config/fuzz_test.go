package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/wanpin/wanpin/pkg/ifname"
)

// FuzzParse: Parse never panics, fails only with Errors that point inside
// the file or say clearly what is wrong, and what it accepts is valid. On
// any text the library accepts, the locator must know the line of every key
// and array element the library decoded. Its seed corpus is
// testdata/fuzz/FuzzParse, plus the example and the testdata/bad corpus.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bad/*.toml")
	seeds = append(seeds, filepath.Join("..", "..", "examples", "wanpin.toml"))
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, seed := range scanSeeds() {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkLocator(t, data)
		cfg, err := Parse("fuzz.toml", data)
		if err == nil {
			checkConfig(t, cfg)
			return
		}
		if cfg != nil {
			t.Errorf("a Config together with errors")
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error is %T, not Errors: %v", err, err)
		}
		checkErrors(t, "fuzz.toml", data, errs)
		for _, e := range errs {
			if e.Msg == "" || e.Line == 0 && e.Key == "" && !strings.HasPrefix(e.Msg, "toml: ") {
				t.Errorf("unclear error: %#v", e)
			}
		}
	})
}

// scanSeeds are valid TOML at the edges of what the scan must read as the
// library does: nesting up to the limits, and brackets, braces, dots,
// quotes and hashes inside strings and comments, where they count for
// nothing.
func scanSeeds() []string {
	nest := func(open, close string, n int) string {
		return "k = " + strings.Repeat(open, n) + strings.Repeat(close, n) + "\n"
	}
	return []string{
		nest("[", "]", MaxDepth), nest("[", "]", MaxDepth+1),
		"k = " + strings.Repeat("{a=", MaxDepth-1) + "1" + strings.Repeat("}", MaxDepth-1) + "\n",
		"k = " + strings.Repeat("[{a=", MaxDepth/2) + "1" + strings.Repeat("}]", MaxDepth/2) + "\n",
		"[" + strings.Repeat("a.", MaxDepth-1) + "a]\nb = 1\n",
		"[[a]]\n[[a.b]]\n[[a.b.c]]\nx.y = [[1], {z = [2]}]\n[a.b.c.d]\nq = 1\n",
		strings.Repeat("k.", MaxDepth-1) + "k = 1\n",
		`"a.b" . 'c.d' . e = 1
["x.y".'z']
"\u0041\x42\e" = 2
`,
		`a = "[[x]] {y} a.b.c = 1 # \" ] }"
b = '[{\'
c = 1
`,
		`a = """
[[x]]
k = { a = [
\"""
"""""
b = '''
[y]
'' ] }
'''''
c = 1
`,
		`# [[x]] { [ a.b = 1
a = [ # ]
  1, # }
  [2, # [
  3],
] # {
b = { c = 1, # }
  d = 2 }
`,
		"a = [1979-05-27 07:32:00, 1979-05-27T07:32:00Z, 07:32:00, 1979-05-27, 2]\nb = 1\n",
		`a = [ "]", ']', """]""", ''']''', { b = "}" }, ]
c = 1
`,
		"\xef\xbb\xbf[t]\r\na = [\r\n 1,\r\n]\r\n",
	}
}

// TestScanSeeds: the seeds are valid TOML, and the scan measures them as
// the library reads them (the fuzz test's checks on each).
func TestScanSeeds(t *testing.T) {
	for _, seed := range scanSeeds() {
		var tree map[string]any
		if _, err := toml.Decode(seed, &tree); err != nil {
			t.Errorf("%q: not valid TOML: %v", seed, err)
			continue
		}
		checkLocator(t, []byte(seed))
	}
}

// checkLocator checks that locate finds every path of the decoded tree,
// and that the scan's counts bound what the library built: the limits
// checked on them are what keeps the library's memory bounded, and a
// count too high would refuse a valid file.
func checkLocator(t *testing.T, data []byte) {
	sc, err := scan(data) // also on text the library refuses: must not panic
	var tree map[string]any
	if _, derr := toml.NewDecoder(bytes.NewReader(data)).Decode(&tree); derr != nil {
		return
	}
	if err != nil {
		// Within the fuzzer's small inputs, only nesting and key length
		// can be exceeded; the library accepted it, so they were.
		var le *limitError
		if !errors.As(err, &le) || !strings.Contains(le.msg, "nesting deeper") && !strings.Contains(le.msg, "dotted parts") && !strings.Contains(le.msg, "full name") {
			t.Errorf("scan refused valid TOML: %v", err)
		}
		return
	}
	lines := bytes.Count(data, []byte("\n")) + 1
	walkTree(tree, "", func(path string) {
		if l := sc.ix.line(path); l < 1 || l > lines {
			t.Errorf("locator: %s at line %d", path, l)
		}
	})
	var s shape
	s.measure(tree, 0)
	if s.depth != sc.depth {
		t.Errorf("scan measured depth %d, the tree is %d deep", sc.depth, s.depth)
	}
	if s.keys > sc.keyParts || s.tables > sc.tables+sc.keyParts || s.values != sc.values || s.tableElems > sc.tables {
		t.Errorf("scan counted %d key parts, %d tables, %d values; the tree has %+v", sc.keyParts, sc.tables, sc.values, s)
	}
}

// shape is what the library made of a file, in the terms the scan counts.
type shape struct {
	depth      int // components of the longest path
	keys       int // keys of all tables
	tables     int // tables below the top, implicit ones included
	values     int // elements of arrays of values
	tableElems int // elements of arrays of tables
}

// measure adds v, found depth components below the top, and what it holds.
func (s *shape) measure(v any, depth int) {
	s.depth = max(s.depth, depth)
	switch v := v.(type) {
	case map[string]any:
		if depth > 0 {
			s.tables++
		}
		s.keys += len(v)
		for _, sub := range v {
			s.measure(sub, depth+1)
		}
	case []map[string]any:
		s.tableElems += len(v)
		for _, sub := range v {
			s.measure(sub, depth+1)
		}
	case []any:
		s.values += len(v)
		for _, sub := range v {
			s.measure(sub, depth+1)
		}
	}
}

// walkTree calls fn with the path of every key and array element in v, in
// the locator's notation.
func walkTree(v any, path string, fn func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, sub := range v {
			p := joinKey(path, k)
			fn(p)
			walkTree(sub, p, fn)
		}
	case []map[string]any:
		for i, sub := range v {
			p := joinIndex(path, i)
			fn(p)
			walkTree(sub, p, fn)
		}
	case []any:
		for i, sub := range v {
			p := joinIndex(path, i)
			fn(p)
			walkTree(sub, p, fn)
		}
	}
}

// checkConfig checks the promises of an accepted Config.
func checkConfig(t *testing.T, cfg *Config) {
	if len(cfg.Uplinks) == 0 {
		t.Errorf("accepted without uplinks")
	}
	if cfg.RulePriority < 1 || cfg.RulePriority > MaxRulePriority {
		t.Errorf("rule_priority %d", cfg.RulePriority)
	}
	tables := map[int]bool{}
	names := map[string]bool{}
	for i, u := range cfg.Uplinks {
		// 0: chosen at run time.
		if u.Table != 0 && (ReservedTable(u.Table) || tables[u.Table]) {
			t.Errorf("uplink %d: table %d reserved or taken", i, u.Table)
		}
		if u.Table != 0 {
			tables[u.Table] = true
		}
		if names[u.Name] || checkUplinkName(u.Name) != nil || ifname.Check(u.Interface) != nil {
			t.Errorf("uplink %d: name %q, interface %q", i, u.Name, u.Interface)
		}
		names[u.Name] = true
		if u.Weight < 1 || u.Weight > MaxWeight || u.Tier < 1 || u.Tier > MaxTier || u.Line < 1 {
			t.Errorf("uplink %d: %+v", i, u)
		}
		if m := cfg.UplinkMark(i); m == 0 || m&^cfg.MarkMask != 0 {
			t.Errorf("uplink %d: mark %#x outside mask %#x", i, m, cfg.MarkMask)
		}
		if h := u.Health; h != nil {
			checkHealth(t, i, h)
		}
	}
	for i, p := range cfg.Policies {
		if p.Line < 1 || checkPolicyName(p.Name) != nil {
			t.Errorf("policy %d: %+v", i, p)
		}
		for _, u := range p.Uplinks {
			if !names[u] {
				t.Errorf("policy %d: unknown uplink %q", i, u)
			}
		}
		for _, r := range p.Ports {
			if r.First == 0 || r.First > r.Last {
				t.Errorf("policy %d: ports %+v", i, r)
			}
		}
		for _, pfx := range append(p.Sources, p.Destinations...) {
			if !pfx.IsValid() || pfx.Masked() != pfx {
				t.Errorf("policy %d: prefix %v", i, pfx)
			}
		}
	}
}

// checkHealth checks what an accepted [uplink.health] table guarantees the
// monitor: usable durations and counts, and targets of the method's form.
func checkHealth(t *testing.T, i int, h *HealthConfig) {
	if h.Interval < MinHealthInterval || h.Timeout <= 0 || h.Timeout > h.Interval || h.HoldDown < 0 ||
		h.MaxRTT < 0 || (h.MaxRTT > 0 && h.MaxRTT >= h.Timeout) {
		t.Errorf("uplink %d: health durations %+v", i, h)
	}
	if len(h.Targets) == 0 || h.Quorum < 1 || h.Quorum > len(h.Targets) || h.DownAfter < 1 || h.UpAfter < 1 ||
		h.Window < 1 || h.MaxLoss < 0 || h.MaxLoss > 100 || !validDNSName(h.DNSName) {
		t.Errorf("uplink %d: health %+v", i, h)
	}
	for _, target := range h.Targets {
		if again, err := ParseTarget(h.Method, target.Text); err != nil || again != target {
			t.Errorf("uplink %d: target %+v parses again as %+v, %v", i, target, again, err)
		}
	}
}
