package config

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.want from the current output")

// TestBad runs every file of the corpus testdata/bad: each NAME.toml has
// problems, NAME.want holds the exact messages, as `wanpin check NAME.toml`
// prints them when run from that directory.
func TestBad(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".toml"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(name, data)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a Config with its errors")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			checkErrors(t, name, data, errs)
			got := err.Error() + "\n"
			wantFile := strings.TrimSuffix(file, ".toml") + ".want"
			if *update {
				if err := os.WriteFile(wantFile, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// checkErrors checks what holds for every error list: named after the
// file, sorted by line, and pointing inside the file.
func checkErrors(t testing.TB, file string, data []byte, errs Errors) {
	t.Helper()
	lines := bytes.Count(data, []byte("\n")) + 1
	for i, e := range errs {
		if e.File != file {
			t.Errorf("error %d names file %q, not %q", i, e.File, file)
		}
		if e.Line < 0 || e.Line > lines {
			t.Errorf("error %d is at line %d of a %d-line file: %v", i, e.Line, lines, e)
		}
		if e.Line == 0 && e.Msg == "" {
			t.Errorf("error %d has neither a line nor a message", i)
		}
		if i > 0 && e.Line < errs[i-1].Line {
			t.Errorf("errors not sorted by line: %d after %d", e.Line, errs[i-1].Line)
		}
	}
}
