package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestCheckBrokenFiles runs `wanpin check` on every broken file of the
// config package's corpus: one clear message per problem, with the line,
// and a non-zero exit.
func TestCheckBrokenFiles(t *testing.T) {
	dir := "../../pkg/config/testdata/bad"
	files, _ := filepath.Glob(filepath.Join(dir, "*.toml"))
	if len(files) < 10 {
		t.Fatalf("corpus too small: %d files", len(files))
	}
	// Run from the corpus directory: the expected messages name the file
	// as it was given.
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".toml"), func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(name, ".toml") + ".want")
			if err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := runMain([]string{"check", "--config", name}, &out, &errb)
			if code == 0 {
				t.Fatalf("exit 0 for a broken file; stdout %q", out.String())
			}
			if got := errb.String(); strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestCheckNamedCases pins the cases the issue names, by message.
func TestCheckNamedCases(t *testing.T) {
	cases := map[string]struct{ file, want string }{
		"unknown key": {`[[uplink]]
name = "a"
interface = "wan1"
wieght = 2
`, "x.toml:4: uplink[1].wieght: unknown key"},
		"bad CIDR": {`[[uplink]]
name = "a"
interface = "wan1"
[[policy]]
name = "p"
destinations = ["203.0.113.0/33"]
`, "x.toml:6: policy \"p\".destinations"},
		"duplicate uplink": {`[[uplink]]
name = "a"
interface = "wan1"
[[uplink]]
name = "a"
interface = "wan2"
`, "x.toml:5: uplink[2].name"},
		"policy naming a missing uplink": {`[[uplink]]
name = "a"
interface = "wan1"
[[policy]]
name = "p"
ports = ["80"]
protocol = "tcp"
uplinks = ["b"]
`, "x.toml:8: policy \"p\".uplinks"},
		"weight 0": {`[[uplink]]
name = "a"
interface = "wan1"
weight = 0
`, "x.toml:4: uplink[1].weight: weight must be 1..1000, got 0"},
	}
	dir := t.TempDir()
	wd, _ := os.Getwd()
	os.Chdir(dir)
	defer os.Chdir(wd)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			os.WriteFile("x.toml", []byte(c.file), 0o644)
			var out, errb bytes.Buffer
			if code := runMain([]string{"check", "--config", "x.toml"}, &out, &errb); code == 0 {
				t.Fatal("exit 0")
			}
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], c.want) {
				t.Errorf("got %q, want one line starting %q", errb.String(), c.want)
			}
		})
	}
}

func TestCheckExample(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runMain([]string{"check", "--config", "../../examples/wanpin.toml"}, &out, &errb); code != 0 {
		t.Fatalf("example rejected: %s", errb.String())
	}
}

// TestPlanGolden: `wanpin plan --all-up` for the shipped example, as the
// admin sees it. Needs no root and no kernel.
func TestPlanGolden(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runMain([]string{"plan", "--all-up", "--config", "../../examples/wanpin.toml"}, &out, &errb); code != 0 {
		t.Fatalf("plan failed: %s", errb.String())
	}
	// What the example asks for must be there whatever the golden says:
	// a regenerated golden cannot drop it unnoticed.
	for _, want := range []string{
		"chain mark_dsl1 {", "chain mark_dsl2 {", "chain mark_lte {",
		// The office VPN's policy, its one uplink's verdict inline (p2p
		// names a service that plan does not resolve: it matches nothing).
		`iifname "lan1" ip saddr 192.0.2.20 ip daddr 203.0.113.0/24 udp dport @p_office-vpn_port goto mark_dsl1`,
		"lookup main suppress_prefixlength 0 proto 119",
		"default via 192.168.8.1 dev wwan0 proto 119",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan of the example lacks %q", want)
		}
	}
	golden := filepath.Join("testdata", "plan-example.golden")
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s: review it with git diff before committing", golden)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), out.String()); d != "" {
		t.Errorf("plan output differs from %s (-golden +now; go test ./cmd/wanpin -run %s -update if intended):\n%s",
			golden, t.Name(), d)
	}
}
