package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"
)

// HookTimeout bounds one transition hook: a hook that hangs is killed.
const HookTimeout = 10 * time.Second

// maxHookRuns bounds how many transitions' hooks may run at once; when
// more pile up (a flapping link), the oldest are not waited for and new
// ones are skipped with a log line rather than queued without end.
const maxHookRuns = 4

// hookRunner runs the executables of a directory on every uplink
// transition, outside the loop, so a slow hook never delays routing.
type hookRunner struct {
	dir  string
	log  *slog.Logger
	slot chan struct{}
}

func newHookRunner(dir string, log *slog.Logger) *hookRunner {
	return &hookRunner{dir: dir, log: log, slot: make(chan struct{}, maxHookRuns)}
}

// transition starts the hooks for one transition, with the uplink, its
// interface, the new state and the reason in the environment:
// WANPIN_UPLINK, WANPIN_INTERFACE, WANPIN_STATE (up|down), WANPIN_REASON.
func (h *hookRunner) transition(uplink, iface, state, reason string) {
	if h == nil || h.dir == "" {
		return
	}
	entries, err := os.ReadDir(h.dir)
	if err != nil {
		if !os.IsNotExist(err) {
			h.log.Warn("reading the hooks directory", "dir", h.dir, "err", err)
		}
		return
	}
	var hooks []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || info.Mode()&0o111 == 0 {
			continue
		}
		hooks = append(hooks, filepath.Join(h.dir, e.Name()))
	}
	if len(hooks) == 0 {
		return
	}
	sort.Strings(hooks)
	select {
	case h.slot <- struct{}{}:
	default:
		h.log.Warn("transition hooks skipped: too many still running", "uplink", uplink, "state", state)
		return
	}
	env := append(os.Environ(),
		"WANPIN_UPLINK="+uplink, "WANPIN_INTERFACE="+iface, "WANPIN_STATE="+state, "WANPIN_REASON="+reason)
	go func() {
		defer func() { <-h.slot }()
		for _, path := range hooks {
			ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
			cmd := exec.CommandContext(ctx, path)
			cmd.Env = env
			cmd.WaitDelay = time.Second
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil {
				h.log.Warn("transition hook failed", "hook", path, "uplink", uplink, "state", state, "err", err, "output", string(out))
			}
		}
	}()
}
