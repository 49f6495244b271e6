package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/core"
)

// A stop removes the exec cgroups whose commands have ended (the reaper
// had not come round yet) and keeps the one still in use.
func TestStopRemovesEndedExecCgroups(t *testing.T) {
	root := t.TempDir()
	d := &Daemon{cgroups: &cgroups.Resolver{Root: root}, state: core.State{Execs: map[string]core.ExecPin{}}}
	for _, p := range []string{core.ExecRoot + "/1", core.ExecRoot + "/2"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
		d.state.Execs[p] = core.ExecPin{Uplink: "isp1"}
	}
	// On cgroupfs a cgroup with a process cannot be removed; here a file
	// stands for it.
	busy := filepath.Join(root, core.ExecRoot, "2", "cgroup.procs")
	if err := os.WriteFile(busy, []byte("42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.removeExecCgroups()
	if _, err := os.Stat(filepath.Join(root, core.ExecRoot, "1")); err == nil {
		t.Errorf("the ended exec's cgroup is left after the stop")
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("the running exec's cgroup was touched: %v", err)
	}
}
