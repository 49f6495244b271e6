package tables

import (
	"sort"
	"strconv"
	"strings"

	"github.com/wanpin/wanpin/pkg/desired"
)

func itoa(i int) string { return strconv.Itoa(i) }

func sortedKeys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// normalise drops trailing blanks that ip prints and Render does not.
func normalise(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		out = append(out, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(out, "\n")
}

func keys(d desired.Routing) string {
	var k []string
	for _, r := range d.Rules {
		k = append(k, r.Key())
	}
	for _, r := range d.Routes {
		if r.Dst.IsValid() && r.Dst.Bits() == 0 {
			r.Dst = r.DstPrefix()
		}
		k = append(k, r.Key()+"|"+r.String())
	}
	sort.Strings(k)
	return strings.Join(k, "\n")
}
