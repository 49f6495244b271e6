package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDriftRepair: deleting one of wanpin's ip rules, a route, and its
// nftables table by hand is repaired within a second, and a LAN stream
// keeps flowing. (The table is deletable because the daemon runs with
// --no-table-owner, as on kernels before 6.9; with the owner flag nobody
// else can delete it, which the second part checks.)
func TestDriftRepair(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1), "--no-table-owner")
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := l.Router
	run(t, l, r, "ip", "rule", "del", "priority", "10101")
	run(t, l, r, "ip", "route", "del", "default", "table", "201", "proto", "119")
	run(t, l, r, "nft", "delete", "table", "inet", "wanpin")
	deleted := time.Now()
	for {
		rules := run(t, l, r, "ip", "rule")
		routes := run(t, l, r, "ip", "route", "show", "table", "201")
		_, nftErr := l.Exec(r, "nft", "list", "table", "inet", "wanpin")
		if strings.Contains(rules, "10101:") && strings.Contains(routes, "default via") && nftErr == nil {
			t.Logf("repaired after %v", time.Since(deleted).Round(time.Millisecond))
			break
		}
		if time.Since(deleted) > time.Second {
			t.Fatalf("not repaired after %v:\n%s\n%s\n%v", time.Since(deleted), rules, routes, nftErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(d.log(), "repairing state another program changed") {
		t.Error("the repair was not logged")
	}
	// While the table was gone the stream's ACKs lost their mark, left
	// by the main table's uplink with the other uplink's NAT address and
	// were dropped as spoofed; the server backs off its retransmissions
	// (a few seconds after half a second of loss, more on a loaded
	// machine), so allow for it. What must not happen is a reset: without
	// the companion table that keeps the NAT hooks, replies to the
	// uplink's address would reach the router itself during the gap and
	// it would reset the connection.
	n := s.Received()
	for deadline := time.Now().Add(20 * time.Second); s.Received() <= n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || s.Err() != nil {
			ct, _ := l.Exec(r, "sh", "-c", "conntrack -L -p tcp --dport 8082 2>/dev/null; nft list tables")
			sp1, _ := l.SpoofedDrops(1)
			sp2, _ := l.SpoofedDrops(2)
			t.Fatalf("stream (peer %s) did not resume after the repair: %v; spoofed drops %d %d\n%s", s.Peer(), s.Err(), sp1, sp2, ct)
		}
	}
	if counts, err := l.CurlMany(40); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("balancing after the repair: %v %v", counts, err)
	}
}

// TestTableOwned: with the owner flag (the default on this kernel) the
// table cannot be deleted or changed by others, and Debian's
// nftables.service (`nft flush ruleset`) leaves it alone.
func TestTableOwned(t *testing.T) {
	l := newLab(t, 2)
	startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	r := l.Router
	if out, err := l.Exec(r, "nft", "delete", "table", "inet", "wanpin"); err == nil {
		t.Errorf("deleting the owned table succeeded: %s", out)
	}
	run(t, l, r, "nft", "flush", "ruleset")
	if _, err := l.Exec(r, "nft", "list", "table", "inet", "wanpin"); err != nil {
		t.Errorf("nft flush ruleset removed the owned table")
	}
	if counts, err := l.CurlMany(20); err != nil || counts[1]+counts[2] != 20 {
		t.Errorf("after nft flush ruleset: %v %v", counts, err)
	}
}
