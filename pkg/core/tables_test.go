package core

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestAssignTables(t *testing.T) {
	seq := func(first, last int) []int {
		var s []int
		for i := first; i <= last; i++ {
			s = append(s, i)
		}
		return s
	}
	for _, tc := range []struct {
		name       string
		configured []int // 0: none configured
		use        TableUse
		want       []int
		router     int
		note       string
	}{
		{"none configured", []int{0, 0, 0}, TableUse{}, []int{200, 201, 202}, 203, ""},
		{"skips configured ones", []int{0, 200, 0, 202, 0}, TableUse{}, []int{201, 200, 203, 202, 204}, 205, ""},
		{"configured later in the file", []int{0, 0, 201}, TableUse{}, []int{200, 202, 201}, 203, ""},
		{"skips 253 to 255", append(seq(200, 252), 0, 0), TableUse{}, append(seq(200, 252), 256, 257), 258, ""},
		{"low ids stay the admin's", []int{1, 0, 100}, TableUse{}, []int{1, 200, 100}, 201, ""},
		{"another program's table", []int{0, 0}, TableUse{Foreign: map[int]bool{200: true}}, []int{201, 202}, 203,
			"uplink u0: routing table 201 (skipped 200: routes of another program)"},
		{"a table another program's rule looks up", []int{0, 0}, TableUse{Rules: map[int]int{201: 5000, 254: 32766}}, []int{200, 202}, 203,
			"uplink u1: routing table 202 (skipped 201: looked up by another program's rule 5000)"},
		{"the router's table too", []int{0}, TableUse{Rules: map[int]int{201: 5000}}, []int{200}, 202,
			"the router's own traffic: routing table 202 (skipped 201: looked up by another program's rule 5000)"},
		{"a named table", []int{0}, TableUse{Named: map[int]string{200: "vpn", 201: "wg"}}, []int{202}, 203,
			`uplink u0: routing table 202 (skipped 200: named "vpn" in rt_tables; 201: named "wg" in rt_tables)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			for i, table := range tc.configured {
				fmt.Fprintf(&b, "[[uplink]]\nname = \"u%d\"\ninterface = \"eth%d\"\n", i, i)
				if table != 0 {
					fmt.Fprintf(&b, "table = %d\n", table)
				}
			}
			cfg := mustConfig(t, b.String())
			got, notes, err := AssignTables(cfg, tc.use, Tables{})
			if err != nil {
				t.Fatal(err)
			}
			var ids []int
			for _, u := range cfg.Uplinks {
				ids = append(ids, got.Uplinks[u.Name])
			}
			if !reflect.DeepEqual(ids, tc.want) || got.Router != tc.router {
				t.Errorf("tables %v router %d, want %v router %d", ids, got.Router, tc.want, tc.router)
			}
			if tc.note != "" && (len(notes.Chosen) == 0 || notes.Chosen[0] != tc.note) {
				t.Errorf("notes %q, want %q first", notes, tc.note)
			}
		})
	}
}

// A configured table that holds another program's routes is refused with
// the file's line; an uplink keeps its table across a reload even when a
// new uplink comes first in the file.
func TestAssignTablesRefusesAndKeeps(t *testing.T) {
	cfg := mustConfig(t, "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\ntable = 200\n")
	_, _, err := AssignTables(cfg, TableUse{Foreign: map[int]bool{200: true}}, Tables{})
	if err == nil || !strings.Contains(err.Error(), "wanpin.toml:1: uplink \"a\": table 200 holds routes of another program") {
		t.Errorf("configured foreign table: %v", err)
	}
	cfg = mustConfig(t, "[[uplink]]\nname = \"b\"\ninterface = \"eth1\"\n[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n")
	got, _, err := AssignTables(cfg, TableUse{}, Tables{Uplinks: map[string]int{"a": 200}, Router: 201})
	if err != nil || got.Uplinks["a"] != 200 || got.Uplinks["b"] != 202 || got.Router != 201 {
		t.Errorf("after a reload: %+v %v", got, err)
	}
	// router_traffic = "main": no router table.
	cfg = mustConfig(t, "router_traffic = \"main\"\n[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n")
	if got, _, _ := AssignTables(cfg, TableUse{}, Tables{}); got.Router != 0 {
		t.Errorf("router table %d with router_traffic main", got.Router)
	}
}

// A configured table, or one an uplink already has, that another
// program's rule looks up is kept with a warning (a rule only reads the
// table: most likely the admin's own); a free choice avoids it.
func TestAssignTablesForeignRules(t *testing.T) {
	use := TableUse{Rules: map[int]int{200: 5000}}
	cfg := mustConfig(t, "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\ntable = 200\n")
	got, notes, err := AssignTables(cfg, use, Tables{})
	want := "wanpin.toml:1: uplink a: routing table 200 is looked up by another program's rule (ip rule show pref 5000): what that rule selects is routed by wanpin's table"
	if err != nil || got.Uplinks["a"] != 200 || len(notes.Warnings) != 1 || !strings.HasSuffix(notes.Warnings[0], want) {
		t.Errorf("configured: %+v %q %v", got, notes.Warnings, err)
	}
	cfg = mustConfig(t, "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\n")
	got, notes, err = AssignTables(cfg, use, Tables{Uplinks: map[string]int{"a": 200}, Router: 201})
	if err != nil || got.Uplinks["a"] != 200 || got.Router != 201 || len(notes.Warnings) != 1 ||
		!strings.HasPrefix(notes.Warnings[0], "uplink a: routing table 200 is looked up by another program's rule") {
		t.Errorf("reload: %+v %q %v", got, notes.Warnings, err)
	}
	got, notes, err = AssignTables(cfg, use, Tables{})
	if err != nil || got.Uplinks["a"] != 201 || len(notes.Warnings) != 0 {
		t.Errorf("start: %+v %+v %v", got, notes, err)
	}
}
