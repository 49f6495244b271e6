package e2e

import (
	"fmt"
	"testing"
)

func TestZZScratch(t *testing.T) {
	l := newLab(t, 2)
	startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	for _, c := range [][]string{{"ip", "rule"}, {"ip", "route", "show", "table", "all"}, {"nft", "list", "ruleset"}, {"sysctl", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.src_valid_mark", "net.ipv4.fwmark_reflect", "net.ipv4.tcp_fwmark_accept"}} {
		out, _ := l.Exec(l.Router, c...)
		t.Logf("%v:\n%s", c, out)
	}
}
