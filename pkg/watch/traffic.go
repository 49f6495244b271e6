package watch

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// IfaceCounters is what an interface's own counters say (rtnetlink's
// IFLA_STATS64): what went in and out through it since it was created,
// link-layer headers included, ARP and neighbour discovery too.
type IfaceCounters struct {
	Index                                  int
	RxBytes, RxPackets, TxBytes, TxPackets uint64
}

// Counters reads the named interfaces' counters; an interface that does
// not exist is left out. The kernel keeps these counters anyway: reading
// them costs the datapath nothing, where a counter rule in wanpin's
// table cost every packet an interface-name lookup and a jump (issue 15).
func (o *Observer) Counters(names []string) (map[string]IfaceCounters, error) {
	out := make(map[string]IfaceCounters, len(names))
	for _, n := range names {
		l, err := o.h.LinkByName(n)
		if err != nil {
			if _, ok := err.(netlink.LinkNotFoundError); ok {
				continue
			}
			return nil, fmt.Errorf("reading the counters of %s: %w", n, err)
		}
		a := l.Attrs()
		c := IfaceCounters{Index: a.Index}
		if s := a.Statistics; s != nil {
			c.RxBytes, c.RxPackets, c.TxBytes, c.TxPackets = s.RxBytes, s.RxPackets, s.TxBytes, s.TxPackets
		}
		out[n] = c
	}
	return out, nil
}
