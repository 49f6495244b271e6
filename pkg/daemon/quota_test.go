package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/quota"
)

// The executor writes what SaveQuota carries and the next start reads it
// back; a corrupt or foreign file is logged and ignored, never fatal.
func TestQuotaStateFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // made by the first save
	var logs bytes.Buffer
	d := &Daemon{opts: Options{StateDir: dir}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	if u := d.loadQuotas(); u != nil || logs.Len() != 0 {
		t.Fatalf("no file: %v, logged %q", u, logs.String())
	}
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.Local)
	d.saveQuota(core.SaveQuota{Usage: map[string]quota.Usage{"lte": {PeriodStart: start, Used: 12345}}})
	if u := d.loadQuotas(); u["lte"].Used != 12345 || !u["lte"].PeriodStart.Equal(start) {
		t.Fatalf("read back %+v; log %s", u, logs.String())
	}
	for _, bad := range []string{"{not json", `{"format": "someone-else/1"}`, ""} {
		logs.Reset()
		os.WriteFile(filepath.Join(dir, quota.FileName), []byte(bad), 0o644)
		if u := d.loadQuotas(); u != nil {
			t.Errorf("%q: loaded %v", bad, u)
		}
		if !strings.Contains(logs.String(), "ignoring the quota state file: counting from zero") || !strings.Contains(logs.String(), quota.FileName) {
			t.Errorf("%q: logged %q", bad, logs.String())
		}
	}
	// A save that cannot be made is logged; the daemon goes on.
	logs.Reset()
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o644)
	d.opts.StateDir = filepath.Join(blocker, "sub")
	d.saveQuota(core.SaveQuota{Usage: map[string]quota.Usage{"lte": {PeriodStart: start}}})
	if !strings.Contains(logs.String(), "saving the quota counts") {
		t.Errorf("a failed save logged %q", logs.String())
	}
}
