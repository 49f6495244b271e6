package daemon

import (
	"fmt"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
)

// DriftInterval is how often the kernel is compared with what was last
// applied. Other programs delete rules and routes without an event wanpin
// could subscribe to (no netlink group carries rule changes, and a
// restarted systemd-networkd or an admin's `ip rule del` just does it), so
// the daemon looks: two netlink dumps and one table lookup twice a second.
const DriftInterval = 500 * time.Millisecond

// checkDrift compares the kernel with the last applied state and repairs
// what went missing, naming it. Repairs are rate-limited by the ticker:
// at most one a DriftInterval.
func (d *Daemon) checkDrift() {
	applied := d.state.Applied
	if applied == nil {
		return // nothing applied yet, or a retry is already pending
	}
	var missing []string
	present, err := d.nft.Present()
	if err != nil {
		d.log.Warn("checking the nftables table", "err", err)
	} else if !present {
		missing = append(missing, "nftables table inet "+applied.NFT.Table)
	}
	cur, err := d.routing.Current()
	if err != nil {
		d.log.Warn("checking rules and routes", "err", err)
	} else {
		missing = append(missing, missingObjects(applied.Routing, cur)...)
	}
	if len(missing) > 0 {
		d.step(core.Drift{Missing: missing})
	}
}

// missingObjects lists what want has and have lacks, as ip prints it.
func missingObjects(want, have desired.Routing) []string {
	haveRules := map[string]bool{}
	for _, r := range have.Rules {
		haveRules[r.Key()] = true
	}
	haveRoutes := map[string]string{}
	for _, r := range have.Routes {
		haveRoutes[r.Key()] = r.String()
	}
	var out []string
	for _, r := range want.Rules {
		if !haveRules[r.Key()] {
			out = append(out, fmt.Sprintf("rule %q", r.String()))
		}
	}
	for _, r := range want.Routes {
		if got, ok := haveRoutes[r.Key()]; !ok || got != r.String() {
			out = append(out, fmt.Sprintf("route %q in table %d", r.String(), r.Table))
		}
	}
	return out
}
