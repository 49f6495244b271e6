package main

import "testing"

// TestNotByUplink: the kernel column names the uplink a route really
// leaves by when the main table's route (an uplink's own link, a second
// LAN) comes before the mark of the uplink chosen.
func TestNotByUplink(t *testing.T) {
	ifaces := map[string]string{"wan1": "isp1", "wan2": "isp2"}
	for _, c := range []struct {
		iface, want, note string
	}{
		{"wan2", "isp2", ""},
		{"wan1", "isp2", " (by isp1: the main table's route to it comes first)"},
		{"lan2", "isp2", " (by no uplink: the main table's route to it comes first)"},
		{"wan1", "", ""}, // unmarked: whichever uplink it leaves by
		{"lan2", "", " (by no uplink: the main table's route to it comes first)"},
		{"", "isp1", ""},
	} {
		if got := notByUplink(ifaces, c.iface, c.want); got != c.note {
			t.Errorf("notByUplink(%q, %q) = %q, want %q", c.iface, c.want, got, c.note)
		}
	}
}
