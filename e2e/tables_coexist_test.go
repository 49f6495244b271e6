package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestForeignRouteConflict: an old hook script replaces wanpin's default
// route in table 200 with its own (`ip route replace default ... table
// 200`, proto boot). wanpin leaves that one route alone, says so once
// (log and status), and goes on applying the rest: rules and routes
// deleted by hand come back, and a carrier loss takes uplink 2 out of the
// router's multipath table. When the script's route goes, wanpin's comes
// back; when it is there again, a reload moves uplink 1 to a free table.
func TestForeignRouteConflict(t *testing.T) {
	l := newLab(t, 2)
	r := l.Router
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	gw := netlab.UplinkGateway4(1)
	run(t, l, r, "ip", "route", "replace", "default", "via", gw, "dev", "wan1", "table", "200")
	d.waitFor("route of another program left in place", 1, 5*time.Second)
	if !strings.Contains(d.log(), "table 200 holds a route of another program (proto 3)") {
		t.Errorf("the conflict's log line does not name the table and the proto:\n%s", d.log())
	}

	// The rest of the routing is still repaired.
	run(t, l, r, "ip", "rule", "del", "priority", "10102")
	run(t, l, r, "ip", "route", "del", "default", "table", "201", "proto", "119")
	waitUntil(t, 5*time.Second, "rule 10102 and table 201's default route repaired", func() (bool, string) {
		out := run(t, l, r, "ip", "rule") + run(t, l, r, "ip", "route", "show", "table", "201")
		return strings.Contains(out, "10102:") && strings.Contains(out, "default via "+netlab.UplinkGateway4(2)), out
	})
	// And failed over: uplink 2 leaves the router's multipath route.
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink down", 1, 5*time.Second)
	waitUntil(t, 3*time.Second, "table 202 without wan2", func() (bool, string) {
		out := run(t, l, r, "ip", "route", "show", "table", "202")
		return strings.Contains(out, "wan1") && !strings.Contains(out, "wan2"), out
	})
	if c, err := l.CurlMany(10); err != nil || c[1] != 10 {
		t.Errorf("uplink 2 down: LAN connections %v %v, want all 10 via ISP 1", c, err)
	}
	if err := l.SetCarrier(2, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink up", 3, 5*time.Second) // isp1 and isp2 at start, isp2 now

	// The script's route is untouched, the conflict logged once, no apply
	// failed, and status shows it.
	// ip prints proto boot, the default, as nothing.
	scripts := "default via " + gw + " dev wan1"
	if out := run(t, l, r, "ip", "route", "show", "table", "200"); !hasLine(out, scripts) {
		t.Errorf("the script's route changed:\n%s", out)
	}
	if n := strings.Count(d.log(), "route of another program left in place"); n != 1 {
		t.Errorf("the conflict logged %d times, want once:\n%s", n, d.log())
	}
	if strings.Contains(d.log(), `msg="applying state"`) {
		t.Errorf("an apply failed:\n%s", d.log())
	}
	st, _ := d.cli(0, "status")
	if !strings.Contains(st, "table 200 (uplink isp1): proto 3 holds the place of") {
		t.Errorf("status does not show the conflict:\n%s", st)
	}

	// The script's route goes: wanpin's is put back.
	run(t, l, r, "ip", "route", "del", "default", "table", "200", "proto", "boot")
	d.waitFor("route conflict ended", 1, 5*time.Second)
	if out := run(t, l, r, "ip", "route", "show", "table", "200"); !strings.Contains(out, "default via "+gw+" dev wan1 proto 119") {
		t.Errorf("wanpin's default route in table 200 is not back:\n%s", out)
	}
	if st, _ := d.cli(0, "status"); strings.Contains(st, "holds the place of") {
		t.Errorf("status still shows a conflict:\n%s", st)
	}

	// It comes back; a reload moves isp1 to a table of its own and
	// leaves 200 to the script.
	run(t, l, r, "ip", "route", "replace", "default", "via", gw, "dev", "wan1", "table", "200")
	d.waitFor("route of another program left in place", 2, 5*time.Second)
	d.cli(0, "reload")
	d.waitFor("configuration reloaded", 1, 5*time.Second)
	d.waitFor("route conflict ended", 2, 5*time.Second)
	if !strings.Contains(d.log(), "uplink isp1: routing table 203 (skipped 200: routes of another program)") {
		t.Errorf("the reload did not move isp1 off table 200:\n%s", d.log())
	}
	if out := run(t, l, r, "ip", "route", "show", "table", "200"); strings.Contains(out, "proto 119") || !hasLine(out, scripts) {
		t.Errorf("table 200 after the reload:\n%s", out)
	}
	if c, err := l.CurlMany(40); err != nil || c[1] == 0 || c[2] == 0 {
		t.Errorf("balancing after the reload: %v %v", c, err)
	}
}

// TestForeignRuleTable: before wanpin starts, a VPN-style rule sends part
// of the LAN into table 201, empty while the tunnel is down. wanpin must
// not choose 201 (its routes there would capture that traffic, and take
// it down with isp2): isp2 gets 202, the log says why, and the LAN fails
// over to isp1 when isp2 loses its line. A configured table that such a
// rule looks up is taken, with a warning.
func TestForeignRuleTable(t *testing.T) {
	l := newLab(t, 2)
	r := l.Router
	run(t, l, r, "ip", "rule", "add", "pref", "5000", "from", "192.0.2.0/26", "lookup", "201")
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	if !strings.Contains(d.log(), "uplink isp2: routing table 202 (skipped 201: looked up by another program's rule 5000)") {
		t.Errorf("no log line about table 201:\n%s", d.log())
	}
	// The table does not exist for the kernel (ip then fails): empty.
	if out, _ := l.Exec(r, "ip", "route", "show", "table", "201"); strings.Contains(out, "proto 119") {
		t.Errorf("wanpin's routes in table 201:\n%s", out)
	}
	if c, err := l.CurlMany(40); err != nil || c[1] == 0 || c[2] == 0 {
		t.Errorf("LAN connections not balanced: %v %v", c, err)
	}
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor("uplink down", 1, 5*time.Second)
	if c, err := l.CurlMany(10); err != nil || c[1] != 10 {
		t.Errorf("isp2 down: the LAN did not fail over to isp1: %v %v", c, err)
	}
	// The admin names table 201 for isp1: a rule only reads it, so the
	// reload goes through, with a warning naming the rule.
	d.writeConfig(strings.Replace(fmt.Sprintf(twoUplinks, 1, 1), `interface = "wan1"`, "interface = \"wan1\"\ntable = 201", 1))
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload to table 201: %d %s", code, out)
	}
	d.waitFor("configuration reloaded", 1, 5*time.Second)
	if !strings.Contains(d.log(), "routing table 201 is looked up by another program's rule (ip rule show pref 5000)") {
		t.Errorf("no warning about rule 5000:\n%s", d.log())
	}
	if out := run(t, l, r, "ip", "rule", "show", "pref", "5000"); !strings.Contains(out, "lookup 201") {
		t.Errorf("rule 5000 changed: %s", out)
	}
}

// hasLine reports whether out has a line that is want, blanks trimmed.
func hasLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}
