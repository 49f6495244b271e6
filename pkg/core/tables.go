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
// tables that hold routes of other programs, tables that other programs'
// ip rules look up (with the lowest such rule's priority), and ids named
// in /etc/iproute2/rt_tables (and rt_tables.d); the last two belong to
// whoever uses or named them even while empty.
type TableUse struct {
	Foreign map[int]bool
	Rules   map[int]int
	Named   map[int]string
}

// TableNotes is what AssignTables says for people: Chosen, which ids
// were skipped for an uplink and why (info); Warnings, tables in use that
// another program's rule looks up.
type TableNotes struct {
	Chosen, Warnings []string
}

// AssignTables gives every uplink its routing table: the configured one,
// refused if another program's routes are in it; otherwise the one it had
// (prev, so a reload never moves an uplink), or the first id from 200 that
// no uplink, no other program (its routes or its rules) and no name in
// rt_tables uses.
//
// A configured table, or one an uplink had, that another program's rule
// looks up is kept, with a warning: a route of another program would
// collide with wanpin's own, but a rule only reads the table, and one
// that appeared after wanpin chose the table, or one that points at a
// table the admin named in the file, is most likely the admin's own way
// of sending some traffic through that uplink (refusing it would break a
// working router at an upgrade). Only a free choice stays clear of such
// rules, since nobody then meant the rule for wanpin's table.
func AssignTables(cfg *config.Config, use TableUse, prev Tables) (Tables, TableNotes, error) {
	out := Tables{Uplinks: map[string]int{}}
	var notes TableNotes
	taken := map[int]string{}
	var errs []string
	ruled := func(what string, id int) {
		if p, ok := use.Rules[id]; ok {
			notes.Warnings = append(notes.Warnings, fmt.Sprintf("%s: routing table %d is looked up by another program's rule (ip rule show pref %d): what that rule selects is routed by wanpin's table",
				what, id, p))
		}
	}
	for _, u := range cfg.Uplinks {
		if u.Table == 0 {
			continue
		}
		if use.Foreign[u.Table] {
			errs = append(errs, fmt.Sprintf("%s:%d: uplink %q: table %d holds routes of another program (ip route show table %d): choose another table, or leave table out to let wanpin choose",
				cfg.Path, u.Line, u.Name, u.Table, u.Table))
		}
		ruled(fmt.Sprintf("%s:%d: uplink %s", cfg.Path, u.Line, u.Name), u.Table)
		out.Uplinks[u.Name] = u.Table
		taken[u.Table] = u.Name
	}
	if len(errs) > 0 {
		return out, TableNotes{}, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	// kept: whether an id the uplink already had may stay its table; free
	// adds what a new choice must avoid too.
	kept := func(id int) (bool, string) {
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
	free := func(id int) (bool, string) {
		if ok, why := kept(id); !ok {
			return ok, why
		}
		if p, ok := use.Rules[id]; ok {
			return false, fmt.Sprintf("looked up by another program's rule %d", p)
		}
		return true, ""
	}
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
			notes.Chosen = append(notes.Chosen, fmt.Sprintf("%s: routing table %d (skipped %s)", what, id, strings.Join(skipped, "; ")))
		}
		return id
	}
	// First the tables uplinks already had (a reload never moves one),
	// then new ones.
	for _, u := range cfg.Uplinks {
		if had := prev.Uplinks[u.Name]; u.Table == 0 && had != 0 {
			if ok, _ := kept(had); ok {
				ruled("uplink "+u.Name, had)
				out.Uplinks[u.Name] = had
				taken[had] = u.Name
			}
		}
	}
	routerWanted := cfg.RouterTraffic == config.RouterBalance
	if had := prev.Router; routerWanted && had != 0 {
		if ok, _ := kept(had); ok {
			ruled("the router's own traffic", had)
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
