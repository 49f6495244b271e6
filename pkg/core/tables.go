package core

import (
	"fmt"
	"strings"

	"github.com/wanpin/wanpin/pkg/config"
)

// Tables is which routing table each uplink, and the router's own
// multipath route, use.
type Tables struct {
	Uplinks map[string]int
	Router  int // 0: no router table (router_traffic = "main")
}

// TableUse is what the kernel and the system's files say of table ids:
// tables that hold routes of other programs, and ids named in
// /etc/iproute2/rt_tables (and rt_tables.d), which belong to whoever
// named them even while empty.
type TableUse struct {
	Foreign map[int]bool
	Named   map[int]string
}

// AssignTables gives every uplink its routing table: the configured one,
// refused if another program's routes are in it; otherwise the one it had
// (prev, so a reload never moves an uplink), or the first id from 200 that
// no uplink, no other program and no name in rt_tables uses. The notes
// say, for people, which ids were skipped and why.
func AssignTables(cfg *config.Config, use TableUse, prev Tables) (Tables, []string, error) {
	out := Tables{Uplinks: map[string]int{}}
	taken := map[int]string{}
	var errs []string
	for _, u := range cfg.Uplinks {
		if u.Table == 0 {
			continue
		}
		if use.Foreign[u.Table] {
			errs = append(errs, fmt.Sprintf("%s:%d: uplink %q: table %d holds routes of another program (ip route show table %d): choose another table, or leave table out to let wanpin choose",
				cfg.Path, u.Line, u.Name, u.Table, u.Table))
		}
		out.Uplinks[u.Name] = u.Table
		taken[u.Table] = u.Name
	}
	if len(errs) > 0 {
		return out, nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	free := func(id int) (bool, string) {
		switch {
		case config.ReservedTable(id):
			return false, "reserved"
		case taken[id] != "":
			return false, "uplink " + taken[id]
		case use.Foreign[id]:
			return false, "routes of another program"
		case use.Named[id] != "":
			return false, fmt.Sprintf("named %q in rt_tables", use.Named[id])
		}
		return true, ""
	}
	var notes []string
	pick := func(what string, _ int) int {
		var skipped []string
		id := config.FirstAutoTable
		for {
			ok, why := free(id)
			if ok {
				break
			}
			if why != "reserved" && !strings.HasPrefix(why, "uplink ") {
				skipped = append(skipped, fmt.Sprintf("%d: %s", id, why))
			}
			id++
		}
		if len(skipped) > 0 {
			notes = append(notes, fmt.Sprintf("%s: routing table %d (skipped %s)", what, id, strings.Join(skipped, "; ")))
		}
		return id
	}
	// First the tables uplinks already had (a reload never moves one),
	// then new ones.
	for _, u := range cfg.Uplinks {
		if had := prev.Uplinks[u.Name]; u.Table == 0 && had != 0 {
			if ok, _ := free(had); ok {
				out.Uplinks[u.Name] = had
				taken[had] = u.Name
			}
		}
	}
	routerWanted := cfg.RouterTraffic == config.RouterBalance
	if had := prev.Router; routerWanted && had != 0 {
		if ok, _ := free(had); ok {
			out.Router = had
			taken[had] = "(router)"
		}
	}
	for _, u := range cfg.Uplinks {
		if u.Table != 0 || out.Uplinks[u.Name] != 0 {
			continue
		}
		id := pick("uplink "+u.Name, 0)
		out.Uplinks[u.Name] = id
		taken[id] = u.Name
	}
	if routerWanted && out.Router == 0 {
		out.Router = pick("the router's own traffic", 0)
		taken[out.Router] = "(router)"
	}
	return out, notes, nil
}
