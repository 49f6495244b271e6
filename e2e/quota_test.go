package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
)

// quotaE2E: isp1 has a 10 MB quota (used up: a last resort); the
// stream port is pinned to it by a policy that may fall back.
const quotaE2E = `
[[uplink]]
name = "isp1"
interface = "wan1"
quota = "10MB"

[[uplink]]
name = "isp2"
interface = "wan2"

[[policy]]
name = "stream"
protocol = "tcp"
ports = ["8082"]
uplinks = ["isp1"]
`

// TestQuota: a download through isp1 uses up its 10 MB quota. Within a
// second of the moment the LAN host had received 10 MB (by then isp1's
// interface had carried more: headers and acknowledgements count too)
// the daemon says so and isp1 leaves the balancing: a new stream of the
// policy falls back to isp2, new connections go to isp2. Status (text
// and JSON) and metrics show it. The count survives a restart (SIGTERM
// saves it; the new daemon starts with isp1 used up). A reload with a
// larger quota applies it. A non-root reset is refused; `wanpin quota
// set` lifts it and `wanpin quota reset` starts the count from zero:
// isp1 is balanced again.
func TestQuota(t *testing.T) {
	l := newLab(t, 2)
	stateDir := t.TempDir()
	d := startWanpin(t, l, quotaE2E, "--state-dir", stateDir, "--metrics-listen", "127.0.0.1:9469")
	d.waitFor(`msg=quota uplink=isp1 used=0 quota=10000000`, 1, time.Second)

	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if isp := l.ISPOf(s.Peer()); isp != 1 {
		t.Fatalf("the stream left by ISP %d, want 1 (policy stream)", isp)
	}
	// The moment the LAN host has 10 MB of the stream's payload: isp1's
	// counters crossed the quota no later.
	var crossed time.Time
	waitUntil(t, 20*time.Second, "10 MB received", func() (bool, string) {
		crossed = time.Now()
		return s.Received() >= 10e6, fmt.Sprintf("%d bytes", s.Received())
	})
	d.waitFor(`msg="quota used up" uplink=isp1`, 1, 2*time.Second)
	usedUp := logTime(t, d.log(), `msg="quota used up" uplink=isp1`)
	var applied time.Time
	waitUntil(t, 2*time.Second, "the table applied after the quota was used up", func() (bool, string) {
		applied = findLogTime(d.log(), "nftables applied", usedUp)
		return !applied.IsZero(), ""
	})
	t.Logf("used up %v after the LAN host had 10 MB, out of the balancing %v later",
		usedUp.Sub(crossed).Round(time.Millisecond), applied.Sub(usedUp).Round(time.Microsecond))
	if usedUp.Sub(crossed) > time.Second {
		t.Errorf("the quota was noticed %v after the LAN host had received 10 MB, want within a second", usedUp.Sub(crossed))
	}
	// Out of the balancing: the policy's new streams fall back to isp2,
	// and so do new connections.
	s2, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	if isp := l.ISPOf(s2.Peer()); isp != 2 {
		t.Errorf("a new stream after the quota was used up left by ISP %d, want 2", isp)
	}
	s2.Close()
	if got, err := l.CurlMany(20); err != nil || got[1] != 0 || got[2] != 20 {
		t.Errorf("20 connections with isp1 used up: %v %v, want all by isp2", got, err)
	}
	// failback = "keep" (the default): the stream stays, and counts.
	if msg := stillFlowing(s); msg != "" {
		t.Errorf("the stream on isp1 %s", msg)
	}
	s.Close()

	q := quotaStatus(t, d, "isp1")
	if !q.Exhausted || q.Used < 10e6 || q.Limit != 10e6 || q.Period != "monthly" || q.Action != "last-resort" ||
		!q.NextReset.After(time.Now()) || q.PeriodStart.After(time.Now()) {
		t.Errorf("status: %+v", q)
	}
	if out, _ := d.cli(0, "status"); !strings.Contains(out, "USED UP: a last resort") {
		t.Errorf("status text:\n%s", out)
	}
	metrics := run(t, l, l.Router, "curl", "-sS", "-m", "5", "http://127.0.0.1:9469/metrics")
	if metric(t, metrics, `wanpin_uplink_quota_exhausted{interface="wan1",uplink="isp1"}`) != 1 ||
		metric(t, metrics, `wanpin_uplink_quota_used_bytes{interface="wan1",uplink="isp1"}`) < 10e6 ||
		metric(t, metrics, `wanpin_uplink_quota_bytes{interface="wan1",uplink="isp1"}`) != 10e6 {
		t.Errorf("metrics:\n%s", grepLines(metrics, "quota"))
	}
	if strings.Contains(metrics, `wanpin_uplink_quota_bytes{interface="wan2"`) {
		t.Errorf("isp2 has no quota but quota metrics")
	}

	// A restart: SIGTERM saves the count, the new daemon takes it up.
	before := quotaStatus(t, d, "isp1").Used
	d.stop(syscall.SIGTERM)
	var kept struct {
		Uplinks map[string]struct {
			Used uint64 `json:"used_bytes"`
		} `json:"uplinks"`
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "quota.json"))
	if err != nil || json.Unmarshal(b, &kept) != nil || kept.Uplinks["isp1"].Used < before {
		t.Fatalf("the state file after SIGTERM: %s, %v; want at least %d bytes", b, err, before)
	}
	d.start()
	d.waitFor(`msg="quota used up" uplink=isp1`, 1, time.Second)
	if q := quotaStatus(t, d, "isp1"); !q.Exhausted || q.Used < kept.Uplinks["isp1"].Used {
		t.Errorf("after the restart: %+v, want used up with at least the %d bytes kept", q, kept.Uplinks["isp1"].Used)
	}
	s3, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	if isp := l.ISPOf(s3.Peer()); isp != 2 {
		t.Errorf("after the restart a new stream left by ISP %d, want 2", isp)
	}
	s3.Close()

	// Only root may reset it.
	if out, code := d.cli(65534, "quota", "reset", "isp1"); code == 0 || !strings.Contains(out, "permission denied") {
		t.Errorf("quota reset as nobody: exit %d, %q", code, out)
	}
	if out, code := d.cli(0, "quota", "reset", "isp2"); code != 1 || !strings.Contains(out, `uplink "isp2" has no quota`) {
		t.Errorf("quota reset of isp2: exit %d, %q", code, out)
	}
	// A reload with a larger quota applies it; back to 10 MB, used up again.
	d.writeConfig(strings.Replace(quotaE2E, `"10MB"`, `"2GB"`, 1))
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: exit %d, %q", code, out)
	}
	if q := quotaStatus(t, d, "isp1"); q.Exhausted || q.Limit != 2e9 || q.Raised || q.Used < kept.Uplinks["isp1"].Used {
		t.Errorf("after a reload with 2GB: %+v", q)
	}
	d.writeConfig(quotaE2E)
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: exit %d, %q", code, out)
	}
	if q := quotaStatus(t, d, "isp1"); !q.Exhausted || q.Limit != 10e6 {
		t.Errorf("after a reload with 10MB: %+v", q)
	}
	if out, code := d.cli(0, "quota", "set", "isp1", "1GB"); code != 0 {
		t.Fatalf("quota set: exit %d, %q", code, out)
	}
	if q := quotaStatus(t, d, "isp1"); q.Exhausted || q.Limit != 1e9 || !q.Raised {
		t.Errorf("after quota set 1GB: %+v", q)
	}
	if out, code := d.cli(0, "quota", "set", "isp1", "10MB"); code != 0 {
		t.Fatalf("quota set: exit %d, %q", code, out)
	}
	if q := quotaStatus(t, d, "isp1"); !q.Exhausted {
		t.Errorf("after quota set 10MB: %+v", q)
	}
	if out, code := d.cli(0, "quota", "reset", "isp1"); code != 0 {
		t.Fatalf("quota reset: exit %d, %q", code, out)
	}
	d.waitFor(`msg="quota available again" uplink=isp1`, 3, time.Second)
	if q := quotaStatus(t, d, "isp1"); q.Exhausted || q.Used > 1e6 {
		t.Errorf("after the reset: %+v", q)
	}
	// Back in the balancing: the policy's stream takes isp1 again, and
	// new connections are spread over both.
	s4, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s4.Close()
	if isp := l.ISPOf(s4.Peer()); isp != 1 {
		t.Errorf("after the reset a new stream left by ISP %d, want 1", isp)
	}
	if got, err := l.CurlMany(40); err != nil || got[1] == 0 || got[2] == 0 {
		t.Errorf("40 connections after the reset: %v %v, want both uplinks", got, err)
	}
}

// quotaStatus is an uplink's quota as `wanpin status --json` shows it.
func quotaStatus(t *testing.T, d *daemon, uplink string) core.QuotaReport {
	t.Helper()
	out, code := d.cli(0, "status", "--json")
	var st core.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: exit %d\n%s", code, out)
	}
	for _, u := range st.Uplinks {
		if u.Name == uplink && u.Quota != nil {
			return *u.Quota
		}
	}
	t.Fatalf("no quota of %s in the status:\n%s", uplink, out)
	return core.QuotaReport{}
}

var logTimeRE = regexp.MustCompile(`^time=(\S+) `)

// logTime is the time of the first log line containing s.
func logTime(t *testing.T, log, s string) time.Time {
	t.Helper()
	return logTimeAfter(t, log, s, time.Time{})
}

// logTimeAfter is the time of the first log line containing s that is
// not before after.
func logTimeAfter(t *testing.T, log, s string, after time.Time) time.Time {
	t.Helper()
	if at := findLogTime(log, s, after); !at.IsZero() {
		return at
	}
	t.Fatalf("no log line with %q from %v:\n%s", s, after, log)
	return time.Time{}
}

// findLogTime is logTimeAfter's search: the zero time when no line
// matches.
func findLogTime(log, s string, after time.Time) time.Time {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		m := logTimeRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse("2006-01-02T15:04:05.000000Z07:00", m[1])
		if err == nil && !at.Before(after) {
			return at
		}
	}
	return time.Time{}
}

func metric(t *testing.T, text, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no %s in:\n%s", series, grepLines(text, "wanpin_"))
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestQuotaActions: what becomes of the connections on isp1 when its
// quota is used up. With failback = "move" the stream is reset (its
// application reconnects, by isp2); with quota_action = "off" isp1 is
// taken out as if down: its connections flushed, status down with the
// quota as the reason, new connections by isp2.
func TestQuotaActions(t *testing.T) {
	for _, mode := range []string{"move", "off"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 2)
			extra := `failback = "move"`
			if mode == "off" {
				extra = `quota_action = "off"`
			}
			cfg := strings.Replace(quotaE2E, `quota = "10MB"`, `quota = "10MB"`+"\n"+extra, 1)
			d := startWanpin(t, l, cfg, "--state-dir", t.TempDir())
			s, err := l.OpenStream("")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if isp := l.ISPOf(s.Peer()); isp != 1 {
				t.Fatalf("the stream left by ISP %d, want 1", isp)
			}
			d.waitFor(`msg="quota used up" uplink=isp1`, 1, 20*time.Second)
			if mode == "move" {
				d.waitFor(`msg="failback: connections moved" uplink=isp1 to=isp2 family=IPv4`, 1, 2*time.Second)
				if m := regexp.MustCompile(`uplink=isp1 to=isp2 family=IPv4 tcp_reset=(\d+) .*reason="isp1's data quota is used up`).FindStringSubmatch(d.log()); m == nil || m[1] == "0" {
					t.Errorf("want the stream reset, with the quota as the reason: %v", m)
				}
				took := waitUntil(t, 2*time.Second, "the stream reset", func() (bool, string) {
					return s.Err() != nil, fmt.Sprintf("%d bytes", s.Received())
				})
				t.Logf("stream reset %v after the move: %v", took.Round(time.Millisecond), s.Err())
			} else {
				d.waitFor(`msg="uplink down" uplink=isp1 interface=wan1 reason="data quota used up (quota_action = \"off\")`, 1, 2*time.Second)
				d.waitFor(`msg="conntrack flushed" uplink=isp1 family=IPv4`, 1, 2*time.Second)
				out, _ := d.cli(0, "status", "--json")
				var st core.Status
				json.Unmarshal([]byte(out), &st)
				if len(st.Uplinks) != 2 || st.Uplinks[0].State != "down" || !strings.Contains(st.Uplinks[0].Reason, "data quota used up") {
					t.Errorf("status: %s", out)
				}
			}
			s2, err := l.OpenStream("")
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if isp := l.ISPOf(s2.Peer()); isp != 2 {
				t.Errorf("a new stream left by ISP %d, want 2", isp)
			}
			if got, err := l.CurlMany(20); err != nil || got[2] != 20 {
				t.Errorf("20 connections: %v %v, want all by isp2", got, err)
			}
		})
	}
}
