package daemon

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
)

// A route wanpin left to another program's route is not missing while
// that route holds its place (the drift check would otherwise repair it
// twice a second, for nothing); once the place is free it is missing.
func TestMissingObjectsLeavesContestedOut(t *testing.T) {
	def := desired.Route{Family: inet.IPv4, Table: 200, Gateway: netip.MustParseAddr("198.51.100.1"), Interface: "wan1"}
	other := desired.Route{Family: inet.IPv4, Table: 201, Interface: "wan2"}
	want := desired.Routing{Routes: []desired.Route{def, other}}
	have := desired.Routing{Routes: []desired.Route{other}}
	if got := missingObjects(want, have, map[string]bool{def.Key(): true}); len(got) != 0 {
		t.Errorf("contested route counted as missing: %q", got)
	}
	wantMissing := []string{`route "default via 198.51.100.1 dev wan1 proto 119" in table 200`}
	if got := missingObjects(want, have, nil); !reflect.DeepEqual(got, wantMissing) {
		t.Errorf("free again: %q, want %q", got, wantMissing)
	}
}
