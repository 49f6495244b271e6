package core

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/wanpin/wanpin/pkg/desired"
)

// RouteConflict is a route wanpin wants in one of its tables whose place
// another program's route holds (same table, destination and metric: an
// old hook script's `ip route replace default ... table 200`). wanpin
// never replaces another program's route, so that one route stays the
// other program's, and everything else is applied as usual.
type RouteConflict struct {
	Route   desired.Route // wanpin's, not installed
	Foreign string        // what holds its place: "proto 3"
	// whose table it was when the conflict began (a reload that moves the
	// uplink away ends it).
	owner string
}

// RouteConflictReport is one RouteConflict in a Status.
type RouteConflictReport struct {
	Table   int    `json:"table"`
	Uplink  string `json:"uplink,omitempty"` // "": the router's own table
	Route   string `json:"route"`            // wanpin's, as ip prints it
	Foreign string `json:"foreign"`
}

func (c RouteConflict) key() string {
	return c.Route.Key() + "\x00" + c.Route.String() + "\x00" + c.Foreign
}

// owner names, for people, whose table id is.
func (t Tables) owner(id int) (uplink, what string) {
	for _, name := range slices.Sorted(maps.Keys(t.Uplinks)) {
		if t.Uplinks[name] == id {
			return name, "uplink " + name
		}
	}
	if t.Router != 0 && t.Router == id {
		return "", "the router's own traffic"
	}
	return "", "no uplink"
}

// noteRouteConflicts keeps the conflicts the latest routing apply found
// and logs each new one once, as an error (the uplink's marked traffic in
// that table now follows the other program's route), and each that
// ended; an unchanged set logs nothing, however often it is applied.
func (s *State) noteRouteConflicts(r *Result, now []RouteConflict) {
	had, seen := map[string]bool{}, map[string]bool{}
	for _, c := range s.RouteConflicts {
		had[c.key()] = true
	}
	next := make([]RouteConflict, 0, len(now))
	for _, c := range now {
		seen[c.key()] = true
		uplink, what := s.Tables.owner(c.Route.Table)
		c.owner = what
		next = append(next, c)
		if had[c.key()] {
			continue
		}
		hint := "remove the other program's route, or reload wanpin to move " + what + " to a free table"
		if uplink != "" && s.configuredTable(uplink) {
			hint = "remove the other program's route, or give uplink " + uplink + " another table"
		}
		r.log(slog.LevelError, "route of another program left in place", "table", c.Route.Table, "for", what,
			"reason", fmt.Sprintf("table %d holds a route of another program (%s): not replacing it with %q", c.Route.Table, c.Foreign, c.Route.String()),
			"hint", hint)
	}
	for _, c := range s.RouteConflicts {
		if !seen[c.key()] {
			r.log(slog.LevelInfo, "route conflict ended", "table", c.Route.Table, "for", c.owner, "route", c.Route.String(),
				"reason", "the route is installed or no longer wanted")
		}
	}
	s.RouteConflicts = next
}

func (s *State) configuredTable(uplink string) bool {
	for _, u := range s.Config.Uplinks {
		if u.Name == uplink {
			return u.Table != 0
		}
	}
	return false
}

// routeConflictReports is the conflicts as status shows them.
func (s State) routeConflictReports() []RouteConflictReport {
	var out []RouteConflictReport
	for _, c := range s.RouteConflicts {
		uplink, _ := s.Tables.owner(c.Route.Table)
		out = append(out, RouteConflictReport{Table: c.Route.Table, Uplink: uplink, Route: c.Route.String(), Foreign: c.Foreign})
	}
	return out
}
