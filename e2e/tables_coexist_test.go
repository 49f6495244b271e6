package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

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
