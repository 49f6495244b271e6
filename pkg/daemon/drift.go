package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// lateDeletion bounds how long a drift check that found a table missing
// waits for the kernel's notification of its deletion.
const lateDeletion = 50 * time.Millisecond

// driftScope is what a drift check looks at.
type driftScope int

const (
	// driftAll: the nftables tables, rules and routes, and sysctls (the
	// ticker).
	driftAll driftScope = iota
	// driftNFT: the nftables tables alone (a deletion was heard).
	driftNFT
)

// checkDrift compares the kernel with the last applied state and repairs
// what went missing, naming it. heard is when a deletion was reported
// (zero when the ticker looks): the repair's delay from there is logged.
// The ticker limits polling repairs to one a DriftInterval; heard
// deletions are repaired at once.
//
// late is the channel deletions are heard on: when the ticker finds a
// table missing before its deletion was heard (the notification is on
// its way: the check and the kernel's message raced, seen under load in
// CI as one repair in ten logged without its delay), the check waits a
// moment for it.
func (d *Daemon) checkDrift(scope driftScope, heard time.Time, late <-chan time.Time) {
	applied := d.state.Applied
	if applied == nil {
		return // nothing applied yet, or a retry is already pending
	}
	var in core.Drift
	tables, err := d.nft.Missing()
	if err != nil {
		d.log.Warn("checking the nftables tables", "err", err)
	}
	if len(tables) > 0 && heard.IsZero() && late != nil {
		select {
		case heard = <-late:
		case <-time.After(lateDeletion):
		}
	}
	for _, t := range tables {
		in.Missing = append(in.Missing, "nftables table "+t)
		in.NFT = true
	}
	if scope == driftAll {
		cur, err := d.routing.Current()
		if err != nil {
			d.log.Warn("checking rules and routes", "err", err)
		} else if m := missingObjects(applied.Routing, cur, d.contested()); len(m) > 0 {
			in.Missing = append(in.Missing, m...)
			in.Routing = true
		}
		if m := d.sysctlDrift(); len(m) > 0 {
			in.Missing = append(in.Missing, m...)
			in.Sysctls = true
		}
	}
	if len(in.Missing) == 0 {
		return
	}
	d.step(in)
	if !in.NFT {
		return // the step logged what it restored
	}
	if heard.IsZero() {
		d.log.Info("drift repaired", "since", "the periodic check found it")
	} else {
		// commit_ms: the part the kernel took over the transaction, its
		// commit lock included (see rules.Manager.LastCommit).
		d.log.Info("drift repaired", "delay_ms", ms(time.Since(heard)), "commit_ms", ms(d.nft.LastCommit()),
			"since", "the deletion was heard")
	}
}

// sysctlDrift lists the sysctls wanpin set that another program (a later
// sysctl.d file, an admin) changed back.
func (d *Daemon) sysctlDrift() []string {
	want := core.GlobalSysctls()
	var out []string
	for iface := range d.state.Tuned {
		if _, eff, err := d.rpFilter(iface); err == nil && eff == "1" {
			out = append(out, fmt.Sprintf("sysctl net.ipv4.conf.%s.rp_filter is strict (1) in effect, want loose", iface))
		}
	}
	for _, sc := range want {
		cur, err := os.ReadFile(filepath.Join(d.opts.ProcSys, sc.Key))
		if err != nil {
			continue // the interface went away: nothing to restore
		}
		if got := strings.TrimSpace(string(cur)); got != sc.Value {
			out = append(out, fmt.Sprintf("sysctl %s is %s, want %s", strings.ReplaceAll(sc.Key, "/", "."), got, sc.Value))
		}
	}
	return out
}

// contested lists, by route key, the known conflicts' routes whose place
// another program's route still holds: they are not missing (wanpin left
// them out on purpose), and asking the kernel again every half second
// would only repeat the conflict. One whose place is free again counts as
// missing, so it is put back.
func (d *Daemon) contested() map[string]bool {
	if len(d.state.RouteConflicts) == 0 {
		return nil
	}
	var routes []desired.Route
	for _, c := range d.state.RouteConflicts {
		routes = append(routes, c.Route)
	}
	held, err := d.routing.Contested(routes)
	if err != nil {
		d.log.Warn("checking the routes of other programs in wanpin's tables", "err", err)
		return nil
	}
	out := map[string]bool{}
	for k := range held {
		out[k] = true
	}
	return out
}

// missingObjects lists what want has and have lacks, as ip prints it,
// leaving out the routes whose keys are in contested (held by another
// program's routes).
func missingObjects(want, have desired.Routing, contested map[string]bool) []string {
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
		if contested[r.Key()] {
			continue
		}
		if got, ok := haveRoutes[r.Key()]; !ok || got != r.String() {
			out = append(out, fmt.Sprintf("route %q in table %d", r.String(), r.Table))
		}
	}
	return out
}

// ms formats d in milliseconds with microsecond precision.
func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }
