package tables

import (
	"fmt"
	"sort"
	"strings"
)

// Render prints d as `ip rule` and `ip route show table N` would, grouped by
// family and table, so that `wanpin plan` output can be compared with the
// kernel by eye or by diff.
func Render(d Desired) string {
	var b strings.Builder
	for _, fam := range Families {
		var rules []Rule
		for _, r := range d.Rules {
			if r.Family == fam {
				rules = append(rules, r)
			}
		}
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].Priority < rules[j].Priority })
		if len(rules) > 0 {
			fmt.Fprintf(&b, "# ip %v rule\n", fam)
			for _, r := range rules {
				b.WriteString(RenderRule(r))
				b.WriteByte('\n')
			}
		}
		byTable := map[int][]Route{}
		var ids []int
		for _, r := range d.Routes {
			if r.Family != fam {
				continue
			}
			if _, ok := byTable[r.Table]; !ok {
				ids = append(ids, r.Table)
			}
			byTable[r.Table] = append(byTable[r.Table], r)
		}
		sort.Ints(ids)
		for _, id := range ids {
			fmt.Fprintf(&b, "# ip %v route show table %d\n", fam, id)
			routes := byTable[id]
			sort.SliceStable(routes, func(i, j int) bool { return routes[i].Metric < routes[j].Metric })
			for _, r := range routes {
				b.WriteString(RenderRoute(r))
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

// RenderRule prints one rule as `ip rule` does.
func RenderRule(r Rule) string {
	from := "all"
	if r.Src.IsValid() {
		from = r.Src.String()
		if r.Src.IsSingleIP() {
			from = r.Src.Addr().String()
		}
	}
	s := fmt.Sprintf("%d:\tfrom %s", r.Priority, from)
	if r.Mark != 0 {
		s += fmt.Sprintf(" fwmark %#x/%#x", r.Mark, r.Mask)
	}
	s += " lookup " + tableName(r.Table)
	if r.Suppress {
		s += " suppress_prefixlength 0"
	}
	return s + fmt.Sprintf(" proto %d", Protocol)
}

// RenderRoute prints one route as `ip route show table N` does.
func RenderRoute(r Route) string {
	dst := "default"
	if r.Dst.IsValid() && r.Dst.Bits() != 0 {
		dst = r.Dst.String()
	}
	var s string
	switch r.Type {
	case Unreachable:
		s = "unreachable " + dst
		if r.Family == V6 {
			s += " dev lo"
		}
	default:
		s = dst
		if r.Gateway.IsValid() {
			s += " via " + r.Gateway.String()
		}
		s += " dev " + r.Interface
	}
	s += fmt.Sprintf(" proto %d", Protocol)
	if r.Type == Unicast && !r.Gateway.IsValid() && r.Family == V4 {
		s += " scope link"
	}
	if r.OnLink {
		s += " onlink"
	}
	if m := r.metric(); m != 0 {
		s += fmt.Sprintf(" metric %d", m)
	}
	if r.Family == V6 {
		s += " pref medium"
	}
	return s
}

func tableName(id int) string {
	switch id {
	case 254:
		return "main"
	case 253:
		return "default"
	case 255:
		return "local"
	}
	return fmt.Sprint(id)
}
