package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestMetrics: the endpoint answers in the lab with the uplinks' states,
// and the traffic counters grow with traffic (also across a reload, which
// replaces the table and its counters). The counters are read by the
// daemon's loop once a second, never by a scrape: they may lag by that.
func TestMetrics(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1), "--metrics-listen", "127.0.0.1:9469")
	scrape := func() string {
		t.Helper()
		return run(t, l, l.Router, "curl", "-sS", "-m", "5", "http://127.0.0.1:9469/metrics")
	}
	value := func(text, series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no %s in:\n%s", series, text)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	// Labels come in alphabetical order, as the Prometheus client writes them.
	isp1Out := `wanpin_uplink_bytes_total{direction="out",interface="wan1",uplink="isp1"}`
	first := scrape()
	if value(first, `wanpin_uplink_up{interface="wan1",uplink="isp1"}`) != 1 || value(first, `wanpin_uplink_up{interface="wan2",uplink="isp2"}`) != 1 {
		t.Errorf("states:\n%s", first)
	}
	before := value(first, isp1Out)
	if _, err := l.CurlMany(40); err != nil {
		t.Fatal(err)
	}
	var after float64
	waitUntil(t, 5*time.Second, "isp1's out bytes to grow", func() (bool, string) {
		after = value(scrape(), isp1Out)
		return after > before, fmt.Sprintf("%v -> %v", before, after)
	})
	// A reload replaces the table; the exported counter must not go back.
	d.writeConfig(fmt.Sprintf(twoUplinks, 2, 1))
	d.cli(0, "reload")
	if again := value(scrape(), isp1Out); again < after {
		t.Errorf("isp1 out bytes went back after a reload: %v -> %v", after, again)
	}
	l.SetCarrier(2, false)
	d.waitFor("uplink down", 1, 5e9)
	// The state is published as the loop steps: no lag.
	text := scrape()
	if value(text, `wanpin_uplink_up{interface="wan2",uplink="isp2"}`) != 0 || value(text, `wanpin_uplink_transitions_total{interface="wan2",uplink="isp2"}`) != 1 {
		t.Errorf("after isp2 went down:\n%s", text)
	}
	t.Logf("resident memory %v bytes", value(text, "process_resident_memory_bytes"))
}
