package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tailscaleRules are tailscaled's ip rules (tailscale util/linuxfw):
// its bypass mark 0x80000 under the mask 0xff0000, and table 52.
var tailscaleRules = [][]string{
	{"ip", "rule", "add", "pref", "5210", "fwmark", "0x80000/0xff0000", "table", "main"},
	{"ip", "rule", "add", "pref", "5230", "fwmark", "0x80000/0xff0000", "table", "default"},
	{"ip", "rule", "add", "pref", "5250", "fwmark", "0x80000/0xff0000", "unreachable"},
	{"ip", "rule", "add", "pref", "5270", "table", "52"},
}

// wanpinIn runs the wanpin binary in the router's namespace on the
// daemon's private bus and returns its output and exit code.
func wanpinIn(t *testing.T, d *daemon, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := append([]string{"--net=/run/netns/" + d.l.Router, "--", "env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("wanpin %v did not exit:\n%s", args, out)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// With Tailscale's mask, check names tailscaled's rules and proposes a
// free mask, run refuses with the same message, and a reload to such a
// file keeps the running state.
func TestTailscaleMaskRefused(t *testing.T) {
	l := newLab(t, 2)
	for _, r := range tailscaleRules {
		run(t, l, l.Router, r...)
	}
	clash := "mark_mask = 0x00ff0000\n" + fmt.Sprintf(twoUplinks, 1, 1)
	d := newDaemon(t, l, clash)

	out, code := wanpinIn(t, d, "check", "--config", d.cfgPath)
	t.Logf("wanpin check: exit %d\n%s", code, out)
	if code != 1 {
		t.Errorf("check exit %d, want 1", code)
	}
	for _, want := range []string{"ip rule 5210 (tailscale)", "ip rule 5230 (tailscale)", "ip rule 5250 (tailscale)",
		"mark_mask = 0x7f000000", `allow_conflicts = ["tailscale"]`} {
		if !strings.Contains(out, want) {
			t.Errorf("check does not say %q", want)
		}
	}
	start := time.Now()
	runOut, code := wanpinIn(t, d, "run", "--config", d.cfgPath)
	t.Logf("wanpin run: exit %d in %v\n%s", code, time.Since(start).Round(time.Millisecond), runOut)
	if code == 0 || !strings.Contains(runOut, "ip rule 5210 (tailscale)") || !strings.Contains(runOut, "mark_mask = 0x7f000000") {
		t.Errorf("run did not refuse with the clash: exit %d", code)
	}
	if tables := run(t, l, l.Router, "nft", "list", "tables"); strings.Contains(tables, "wanpin") {
		t.Errorf("a refused start left nftables tables:\n%s", tables)
	}

	// The default mask starts; a reload to Tailscale's mask is refused
	// and the running state stays.
	d.writeConfig(fmt.Sprintf(twoUplinks, 1, 1))
	d.start()
	d.waitFor("nftables applied", 1, 5*time.Second)
	// The listing without its counters, which any packet moves.
	counters := regexp.MustCompile(`counter packets \d+ bytes \d+`)
	listing := func() string {
		return counters.ReplaceAllString(run(t, l, l.Router, "nft", "list", "table", "inet", "wanpin"), "counter")
	}
	before := listing()
	rulesBefore := run(t, l, l.Router, "ip", "rule")
	d.writeConfig(clash)
	out, code = d.cli(0, "reload")
	t.Logf("reload: exit %d: %s", code, out)
	if code == 0 || !strings.Contains(out, "ip rule 5210 (tailscale)") {
		t.Errorf("reload to Tailscale's mask: exit %d, %q", code, out)
	}
	if after := listing(); after != before {
		t.Errorf("the table changed after a refused reload:\n%s", after)
	}
	if after := run(t, l, l.Router, "ip", "rule"); after != rulesBefore {
		t.Errorf("the ip rules changed after a refused reload:\n%s", after)
	}
}

// Tailscale started after wanpin, while wanpin runs with Tailscale's mask
// (allowed when nothing else was there): one log line naming its rules
// within a second, and status shows them.
func TestTailscaleAddedWhileRunning(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, "mark_mask = 0x00ff0000\n"+fmt.Sprintf(twoUplinks, 1, 1))
	d.waitFor("nftables applied", 1, 5*time.Second)
	added := time.Now()
	for _, r := range tailscaleRules {
		run(t, l, l.Router, r...)
	}
	d.waitFor("other programs' rules clash with wanpin's", 1, 3*time.Second)
	took := time.Since(added)
	var line string
	for _, ln := range strings.Split(d.log(), "\n") {
		if strings.Contains(ln, "other programs' rules clash") {
			line = ln
		}
	}
	// The check runs every NeighboursInterval (1 s): logged within about
	// that (measured, not asserted: the machines are shared).
	t.Logf("logged %v after the rules were added: %s", took.Round(time.Millisecond), line)
	for _, want := range []string{"ip rule 5210", "ip rule 5230", "ip rule 5250", "tailscale"} {
		if !strings.Contains(line, want) {
			t.Errorf("the log line does not name %q", want)
		}
	}
	if n := strings.Count(d.log(), "other programs' rules clash"); n != 1 {
		t.Errorf("%d log lines, want one", n)
	}
	s := statusOf(t, d)
	ids := map[string]bool{}
	for _, f := range s.Conflicts {
		ids[f.ID] = true
	}
	if !ids["ip rule 5210"] || !ids["ip rule 5250"] {
		t.Errorf("status conflicts: %+v", s.Conflicts)
	}
	out, _ := d.cli(0, "status")
	t.Logf("wanpin status:\n%s", out)
	if !strings.Contains(out, "5210") {
		t.Errorf("wanpin status does not show the clash")
	}
	// Gone again: logged once.
	for _, pref := range []string{"5210", "5230", "5250", "5270"} {
		run(t, l, l.Router, "ip", "rule", "del", "pref", pref)
	}
	d.waitFor("clash gone", 1, 3*time.Second)
}
