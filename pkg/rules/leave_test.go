package rules

import (
	"strings"
	"testing"
)

// TestLeavePinsWhatLeaves: a new connection's packet leaving an uplink's
// interface is pinned to that uplink whatever uplink its meta mark named.
// The suppress rule comes before the mark rules, so the kernel sends a
// packet marked for wan2 to an address on wan1's own link (the ISP's
// router, a modem) out of wan1; a drop there lost every such connection
// the balancer gave wan2.
func TestLeavePinsWhatLeaves(t *testing.T) {
	out := Render(goldenSpecs()["two_up"])
	for _, chain := range []string{"leave_wan1", "leave_wan2"} {
		i := strings.Index(out, "\tchain "+chain+" {\n")
		if i < 0 {
			t.Fatalf("no chain %s in\n%s", chain, out)
		}
		body := out[i : i+strings.Index(out[i:], "\t}\n")]
		if strings.Contains(body, "drop") {
			t.Errorf("%s drops a new connection marked for another uplink:\n%s", chain, body)
		}
		if !strings.Contains(body, "ct mark set") {
			t.Errorf("%s does not pin:\n%s", chain, body)
		}
	}
}
