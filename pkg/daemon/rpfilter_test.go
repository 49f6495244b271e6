package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wanpin loosens only a strict reverse-path filter, remembers what it
// was and puts it back at stop; off and loose stay as they are (raising
// 0 to 2 would cost every packet from the uplink a reverse lookup).
func TestLoosenRPFilter(t *testing.T) {
	for _, c := range []struct {
		all, own, after, stopped string
	}{
		{"0", "1", "2", "1"}, // strict on the interface: loosened, restored
		{"1", "0", "2", "0"}, // strict through "all": loosened, restored
		{"0", "0", "0", "0"}, // off: left off
		{"2", "0", "0", "0"}, // loose through "all": left
		{"0", "2", "2", "2"}, // loose: left
	} {
		dir := t.TempDir()
		write := func(iface, v string) {
			p := filepath.Join(dir, "net/ipv4/conf", iface)
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(p, "rp_filter"), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		read := func() string {
			b, _ := os.ReadFile(filepath.Join(dir, "net/ipv4/conf/wan1/rp_filter"))
			return strings.TrimSpace(string(b))
		}
		write("all", c.all)
		write("wan1", c.own)
		d := &Daemon{opts: Options{ProcSys: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), loosened: map[string]string{}}
		d.loosenRPFilter("wan1")
		d.loosenRPFilter("wan1") // again (a new ifindex): the first value is what goes back
		if got := read(); got != c.after {
			t.Errorf("all=%s wan1=%s: %s after loosening, want %s", c.all, c.own, got, c.after)
		}
		d.restoreRPFilters()
		if got := read(); got != c.stopped {
			t.Errorf("all=%s wan1=%s: %s after stop, want %s", c.all, c.own, got, c.stopped)
		}
	}
}
