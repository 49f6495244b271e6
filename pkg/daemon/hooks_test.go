package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHooksRunWithEnvironmentAndNeverBlock(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	os.WriteFile(filepath.Join(dir, "10-record"), []byte("#!/bin/sh\necho \"$WANPIN_UPLINK $WANPIN_INTERFACE $WANPIN_STATE $WANPIN_REASON\" >> "+out+"\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "20-slow"), []byte("#!/bin/sh\nsleep 2\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "not-executable"), []byte("#!/bin/sh\nexit 1\n"), 0o644)
	h := newHookRunner(dir, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	start := time.Now()
	h.transition("dsl", "ppp0", "down", "3 rounds lost")
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("transition blocked for %v", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(out)
		if strings.TrimSpace(string(b)) == "dsl ppp0 down 3 rounds lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hook output %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The slow hook holds a slot; enough transitions fill them and the
	// next is skipped, not queued.
	for i := 0; i < maxHookRuns+2; i++ {
		h.transition("dsl", "ppp0", "up", "ok")
	}
	if len(h.slot) != maxHookRuns {
		t.Errorf("%d hook runs in flight, want the bound %d", len(h.slot), maxHookRuns)
	}
}
