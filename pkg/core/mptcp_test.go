package core

import (
	"strings"
	"testing"
	"time"
)

// mptcpConfig: fibre (tier 1) and dsl (tier 2) take part; lte opts out.
const mptcpConfig = `
mptcp = true

[[uplink]]
name = "fibre"
interface = "wan1"

[[uplink]]
name = "dsl"
interface = "ppp0"
tier = 2
`

// MPTCP endpoints, step by step (golden mptcp): at start one per
// address of each usable family, dsl's as backups (a worse tier); when
// fibre loses carrier its endpoints go and dsl's are no longer backups
// (the best tier up); fibre's return brings its endpoints back and dsl's
// backup flags; a reload without mptcp removes every endpoint wanpin
// made; one with it brings them back; opting an uplink out drops its.
func TestMPTCPGolden(t *testing.T) {
	cfg := mustConfig(t, mptcpConfig)
	pppUp := ppp(7, "198.51.100.10", "198.51.100.9")
	steps := []step{
		{0, Start{Links: links(fibre(), pppUp)}},
		{time.Second, Observed{Links: links(noCarrier(fibre()), pppUp), Trigger: "netlink"}},
		{2 * time.Second, Observed{Links: links(fibre(), pppUp), Trigger: "netlink"}},
		{3 * time.Second, Reload{Config: mustConfig(t, strings.Replace(mptcpConfig, "mptcp = true", "", 1))}},
		{4 * time.Second, Reload{Config: cfg}},
		{5 * time.Second, Reload{Config: mustConfig(t, mptcpConfig+"mptcp = false\n")}},
		{6 * time.Second, Stop{}},
	}
	_, got, res := run(cfg, steps)
	checkGolden(t, "mptcp", got)
	mptcpOf := func(i int) (ApplyMPTCP, bool) {
		for _, e := range res[i].Effects {
			if m, ok := e.(ApplyMPTCP); ok {
				return m, true
			}
		}
		return ApplyMPTCP{}, false
	}
	// Stated apart from the golden: after routing (a subflow needs its
	// source rule), and a reload that turns mptcp off still removes.
	for i := range res {
		var routing, mp = -1, -1
		for j, e := range res[i].Effects {
			switch e.(type) {
			case ApplyRouting:
				routing = j
			case ApplyMPTCP:
				mp = j
			}
		}
		if mp >= 0 && routing > mp {
			t.Errorf("step %d: mptcp applied before routing", i)
		}
	}
	if m, ok := mptcpOf(3); !ok || m.MPTCP.Enabled || len(m.MPTCP.Endpoints) != 0 {
		t.Errorf("reload without mptcp: %+v, %v", m, ok)
	}
	if m, ok := mptcpOf(0); !ok || len(m.MPTCP.Endpoints) == 0 || m.MPTCP.Endpoints[0].Backup {
		t.Errorf("start: %+v", m)
	}
}
