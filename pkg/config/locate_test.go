package config

import (
	"testing"

	"github.com/BurntSushi/toml"
)

func TestLocate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		src    string
		want   map[string]int // path: line
		absent []string       // paths that must not be found
	}{
		{
			name:   "top-level keys and comments",
			src:    "# comment = 1\nmark_mask = 0xff # trailing = 2\n\n  rule_priority=5\n",
			want:   map[string]int{"mark_mask": 2, "rule_priority": 4},
			absent: []string{"comment", "trailing"},
		},
		{
			name: "arrays of tables count their elements",
			src:  "[[uplink]]\nname = \"a\"\n[[uplink]] # b\nname = \"b\"\nweight = 2\n[[policy]]\nname = \"p\"\n[[uplink]]\n",
			want: map[string]int{
				"uplink": 1, "uplink[0]": 1, "uplink[0].name": 2,
				"uplink[1]": 3, "uplink[1].name": 4, "uplink[1].weight": 5,
				"policy[0]": 6, "policy[0].name": 7, "uplink[2]": 8,
			},
			absent: []string{"uplink[3]", "uplink[0].weight"},
		},
		{
			name: "plain tables, also below an array element",
			src:  "[a]\nx = 1\n[ a . b ]\ny = 2\n[[u]]\n[u.sub]\nz = 3\n[[u]]\n[u.sub]\nz = 4\n",
			want: map[string]int{
				"a": 1, "a.x": 2, "a.b": 3, "a.b.y": 4,
				"u[0].sub": 6, "u[0].sub.z": 7, "u[1].sub": 9, "u[1].sub.z": 10,
			},
		},
		{
			name: "nested arrays of tables",
			src:  "[[p]]\n[[p.r]]\nk = 1\n[[p.r]]\nk = 2\n[[p]]\n[[p.r]]\nk = 3\n",
			want: map[string]int{"p[0].r[0].k": 3, "p[0].r[1].k": 5, "p[1].r[0].k": 8},
		},
		{
			name: "quoted and dotted keys",
			src:  "\"my key\" = 1\n'lit.key' = 2\na.\"b c\".d = 3\n\"esc\\u0041\" = 4\n\"\" = 5\n[\"t.x\"]\ny = 6\n",
			want: map[string]int{
				`"my key"`: 1, `"lit.key"`: 2, "a": 3, `a."b c"`: 3, `a."b c".d`: 3,
				"escA": 4, `""`: 5, `"t.x"`: 6, `"t.x".y`: 7,
			},
			absent: []string{"lit", "t"},
		},
		{
			name: "multi-line arrays: each element has its line",
			src:  "ports = [\n  \"80\",  # web\n\n  \"443\", [1,\n 2],\n]\nnext = 1\n",
			want: map[string]int{
				"ports": 1, "ports[0]": 2, "ports[1]": 4, "ports[2]": 4,
				"ports[2][0]": 4, "ports[2][1]": 5, "next": 7,
			},
			absent: []string{"ports[3]"},
		},
		{
			name: "keys inside multi-line strings do not count",
			src: "a = \"\"\"\nb = 1\n[[uplink]]\n\\\"\"\"\nc = 2\n\"\"\"\n" +
				"d = '''\ne = 3\n'''\nf = \"\"\"x\"\"\"\"\"\ng = '''y'''''\nh = 4\n",
			want:   map[string]int{"a": 1, "d": 7, "f": 10, "g": 11, "h": 12},
			absent: []string{"b", "c", "e", "uplink", "uplink[0]"},
		},
		{
			name: "strings holding brackets, quotes and hashes",
			src:  "a = \"[x] # \\\" ]\"\nb = \"it's\"\nc = [\"]\", '[', \"#\"]\nd = 1\n",
			want: map[string]int{"a": 1, "b": 2, "c": 3, "c[2]": 3, "d": 4},
		},
		{
			name: "inline tables, also over several lines (TOML 1.1)",
			src:  "uplink = [\n  { name = \"a\", interface = \"e0\" },\n  { name = \"b\",\n    weight = 0, sub = { k = 1 } },\n]\nt = {\n  x = 1, # c\n  y = 2,\n}\n",
			want: map[string]int{
				"uplink[0]": 2, "uplink[0].name": 2, "uplink[0].interface": 2,
				"uplink[1]": 3, "uplink[1].name": 3, "uplink[1].weight": 4, "uplink[1].sub.k": 4,
				"t": 6, "t.x": 7, "t.y": 8,
			},
		},
		{
			name: "byte order mark",
			src:  "\xef\xbb\xbfa = 1\nb = 2\n",
			want: map[string]int{"a": 1, "b": 2},
		},
		{
			name: "CRLF line ends",
			src:  "a = 1\r\n[[u]]\r\nb = [\r\n 1,\r\n]\r\nc = 2\r\n",
			want: map[string]int{"a": 1, "u[0]": 2, "u[0].b": 3, "u[0].b[0]": 4, "u[0].c": 6},
		},
		{
			name: "values of every kind",
			src:  "a = 1979-05-27T07:32:00Z\nb = -1.5e3\nc = true\nd = inf\ne = 0xff_ff\nf = 07:32\n",
			want: map[string]int{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The locator is only meant for what the library accepts.
			var tree map[string]any
			if _, err := toml.Decode(tc.src, &tree); err != nil {
				t.Fatalf("not valid TOML: %v", err)
			}
			ix, err := locate([]byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			for path, line := range tc.want {
				if got := ix.line(path); got != line {
					t.Errorf("%s: line %d, want %d", path, got, line)
				}
			}
			for _, path := range tc.absent {
				if got, ok := ix[path]; ok {
					t.Errorf("%s found at line %d; it is not a key", path, got)
				}
			}
			if t.Failed() {
				t.Logf("index: %v", ix)
			}
		})
	}
}

// The locator also runs on text the TOML library refuses (the fuzz test
// feeds it anything): it must end, without panicking.
func TestLocateMalformed(t *testing.T) {
	for _, src := range []string{
		"", "[", "[[", "[[a", "a", "a =", "a = [", "a = {", "a = \"", "a = '''", "a = \"\"\"\\",
		"= 1", "]]]", "a = [,,,]", "a = {,,}", "\"\\u12", "a.\n= 1", "a = \"\\", "[[]]\nx=1",
		"a = [ {b = [ {c = \"\"\" ]",
	} {
		if _, err := locate([]byte(src)); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

func TestQuoteKey(t *testing.T) {
	for in, want := range map[string]string{
		"weight": "weight", "in_interfaces": "in_interfaces", "a-b": "a-b",
		"": `""`, "a b": `"a b"`, "a.b": `"a.b"`, `q"`: `"q\""`,
	} {
		if got := quoteKey(in); got != want {
			t.Errorf("quoteKey(%q) = %s, want %s", in, got, want)
		}
	}
}
