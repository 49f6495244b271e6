package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
)

// TestCheckBadFiles: files that hung `wanpin check` or ran it out of
// memory (issue 13) are refused at once, with one line naming the file,
// and the line for those whose content is at fault.
func TestCheckBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.toml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	policies := func(n int) string {
		var b strings.Builder
		b.WriteString("[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\n")
		for i := range n {
			fmt.Fprintf(&b, "[[policy]]\nname = \"p%d\"\nports = [\"%d\"]\nprotocol = \"tcp\"\n", i, i%65535+1)
		}
		return b.String()
	}
	nesting := fmt.Sprintf("nesting deeper than %d levels", config.MaxDepth)
	parts := fmt.Sprintf("a key of more than %d dotted parts", config.MaxDepth)
	for _, c := range []struct {
		name, path string
		line       bool   // the message has a line number
		msg        string // and says this
		parsed     bool   // the whole file is parsed: it costs what a valid one does
	}{
		{"FIFO", fifo, false, "not a regular file: it is a named pipe (FIFO)", false},
		{"/dev/zero", "/dev/zero", false, "not a regular file: it is a character device", false},
		{"symlink to /dev/zero", zero, false, "not a regular file: it is a character device", false},
		{"100k nested arrays", write("arrays.toml", "k = "+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+"\n"), true, nesting, false},
		{"100k nested inline tables", write("inline.toml", "k = "+strings.Repeat("{a=", 100000)+"1"+strings.Repeat("}", 100000)+"\n"), true, nesting, false},
		{"20,000 dotted keys", write("dotted.toml", strings.Repeat("a.", 20000)+"b = 1\n"), true, parts, false},
		{"40 KB header", write("header.toml", "["+strings.Repeat("a.", 20000)+"b]\n"), true, parts, false},
		{"100,001 policies", write("policies.toml", policies(100001)), true, fmt.Sprintf("%d policies", config.MaxPolicies), false},
		// Within the file's shape, one over the limit the daemon takes.
		{"MaxPolicies+1 policies", write("limit.toml", policies(config.MaxPolicies+1)), true,
			fmt.Sprintf("policy[%d]: more than %d policies", config.MaxPolicies+1, config.MaxPolicies), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			code, stdout, stderr := checkWithin(t, c.path)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			alloc := float64(after.TotalAlloc-before.TotalAlloc) / 1e6
			t.Logf("exit %d in %v, %.1f MB allocated: %s", code, took, alloc, strings.TrimSpace(stderr))
			if code == 0 || stdout != "" {
				t.Errorf("exit %d, stdout %q", code, stdout)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			want := regexp.QuoteMeta(c.path) + ": "
			if c.line {
				want = "^" + regexp.QuoteMeta(c.path) + `:\d+: `
			}
			if len(lines) != 1 || !regexp.MustCompile(want).MatchString(lines[0]) || !strings.Contains(lines[0], c.msg) {
				t.Errorf("got %q, want one line matching %s saying %q", stderr, want, c.msg)
			}
			// Each bomb took gigabytes before.
			if alloc > 64 && !c.parsed {
				t.Errorf("%.1f MB allocated", alloc)
			}
		})
	}
}

// checkWithin runs `wanpin check` on path and fails the test if it has not
// finished within a deadline far above what it needs: a hang is what is
// tested, not speed.
func checkWithin(t *testing.T, path string) (code int, stdout, stderr string) {
	t.Helper()
	done := make(chan struct{})
	var out, errb bytes.Buffer
	go func() {
		defer close(done)
		code = runMain([]string{"check", "--config", path}, &out, &errb)
	}()
	select {
	case <-done:
		return code, out.String(), errb.String()
	case <-time.After(10 * time.Second):
		t.Fatalf("wanpin check %s still running after 10 s", path)
	}
	panic("unreachable")
}
