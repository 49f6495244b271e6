package mptcp

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/nstest"
)

// TestKernelSubflowRouting shows what routes a subflow out of its uplink
// (the server's side drops a source from the other uplink and answers
// ARP only for its own link's address, as ISPs do). The subflow from
// 198.51.100.1 joins only through the `from 198.51.100.1 lookup 102`
// rule: without it, it leaves by the main table's uplink 1 and is
// dropped. With the endpoint's dev the subflow socket is bound to wan2,
// so a balancer's mark pointing at uplink 1's table is skipped (no route
// through wan2 there: the lookup goes on to the source rule); but once
// that table ends in `unreachable default`, as wanpin's do, the lookup
// stops there and the marked subflow never joins. Hence: route subflows
// by source, never mark them.
func TestKernelSubflowRouting(t *testing.T) {
	for _, c := range []struct {
		name       string
		dev        bool
		noRule     bool
		remark     bool // the output route chain marks the subflows for uplink 1's table
		unreach    bool // uplink 1's table ends in unreachable default
		wantJoined bool
	}{
		{name: "source rule and dev", dev: true, wantJoined: true},
		{name: "source rule, no dev", wantJoined: true},
		{name: "no source rule, dev", dev: true, noRule: true},
		{name: "no source rule, no dev", noRule: true},
		{name: "re-marked, dev", dev: true, remark: true, wantJoined: true},
		{name: "re-marked, no dev", remark: true},
		{name: "re-marked, dev, unreachable default", dev: true, remark: true, unreach: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			l.serve(t)
			w := []Endpoint{l.want[0], l.want[1]}
			if !c.dev {
				w[0].Ifindex, w[1].Ifindex = 0, 0
			}
			if c.noRule {
				l.router.Run(t, "ip", "rule", "del", "priority", "1002")
			}
			if c.remark {
				f := filepath.Join(t.TempDir(), "mark.nft")
				// Like the balancer: a route chain on output, so the mark
				// makes the kernel look the route up again.
				rules := "table inet wmptest {\n\tchain out {\n\t\ttype route hook output priority mangle; policy accept;\n" +
					"\t\ttcp dport " + strconv.Itoa(serverPort) + " meta mark set 0x65\n\t}\n}\n"
				if err := os.WriteFile(f, []byte(rules), 0o644); err != nil {
					t.Fatal(err)
				}
				l.router.Run(t, "nft", "-f", f)
				l.router.Run(t, "ip", "rule", "add", "fwmark", "0x65", "lookup", "101", "priority", "900")
			}
			if c.unreach {
				l.router.Run(t, "ip", "route", "add", "unreachable", "default", "metric", "4000", "table", "101")
			}
			l.sync(t, w)
			d := l.dial(t, true)
			if c.wantJoined {
				l.subflows(t, "192.0.2.1:1 198.51.100.1:1")
				l.carries(t, d, "wan2", "joined")
				return
			}
			// Not joined: the MP_JOIN SYN went out and timed out at least
			// once with no answer, and only the first subflow is up.
			waitFor(t, "the join's SYN to time out", func() (bool, string) {
				c := netstat(t, l.router)
				return c["MPTcpExt:MPJoinSynTx"] >= 1 && c["TcpExt:TCPTimeouts"] >= 1,
					fmt.Sprintf("%d join SYNs, %d timeouts", c["MPTcpExt:MPJoinSynTx"], c["TcpExt:TCPTimeouts"])
			})
			if c := netstat(t, l.router); c["MPTcpExt:MPJoinSynAckRx"] != 0 {
				t.Errorf("the join was answered: %d SYN-ACKs", c["MPTcpExt:MPJoinSynAckRx"])
			}
			n, err := Count(int(l.router.Handle))
			if err != nil {
				t.Fatal(err)
			}
			if got := countsText(n); got != "192.0.2.1:1" {
				t.Errorf("subflows %s, want the first one only", got)
			}
			flowing(t, d, 1<<20, "first subflow")
		})
	}
}

// netstat returns ns's counters from /proc/net/netstat, keyed as
// "MPTcpExt:MPJoinSynTx".
func netstat(t *testing.T, ns *nstest.NS) map[string]int64 {
	t.Helper()
	lines := strings.Split(ns.Run(t, "cat", "/proc/net/netstat"), "\n")
	out := map[string]int64{}
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 {
			continue
		}
		for j := 1; j < len(names); j++ {
			out[names[0]+names[j]], _ = strconv.ParseInt(values[j], 10, 64)
		}
	}
	return out
}
