package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestDriftRepair: deleting one of wanpin's ip rules and a route of
// its tables by hand (the daemon owns its nftables table, as it does by
// default on this kernel) is repaired within a second and a LAN stream
// keeps flowing.
func TestDriftRepair(t *testing.T) {
	l := newLab(t, 2)
	// The stream is pinned to uplink 2, whose fwmark rule goes: until the
	// repair its packets would be routed out of uplink 1, where the
	// kernel would kill their masquerade entry (interface changed) and
	// the connection with it. wanpin's guard drops them instead, so the
	// stream only waits for TCP to retransmit.
	d, s := startWithStream(t, l)
	r := l.Router
	run(t, l, r, "ip", "rule", "del", "priority", "10101")
	run(t, l, r, "ip", "rule", "del", "priority", "10102")
	run(t, l, r, "ip", "route", "del", "default", "table", "201", "proto", "119")
	waitRepaired(t, l, d, false)
	n := s.Received()
	for deadline := time.Now().Add(10 * time.Second); s.Received() <= n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || s.Err() != nil {
			t.Fatalf("stream did not resume after the repair: %v", s.Err())
		}
	}
	if sp, _ := l.SpoofedDrops(1); sp != 0 {
		t.Errorf("%d packets left through uplink 1 with uplink 2's address", sp)
	}
	if counts, err := l.CurlMany(40); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("balancing after the repair: %v %v", counts, err)
	}
}

// TestDriftRepairTable: on kernels without the owner flag (simulated with
// --no-table-owner) the table itself can be deleted: it is back within a
// second and new connections are balanced again.
func TestDriftRepairTable(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1), "--no-table-owner")
	run(t, l, l.Router, "ip", "rule", "del", "priority", "10101")
	run(t, l, l.Router, "nft", "delete", "table", "inet", "wanpin")
	waitRepaired(t, l, d, true)
	if counts, err := l.CurlMany(40); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("balancing after the repair: %v %v", counts, err)
	}
}

func waitRepaired(t *testing.T, l *netlab.Lab, d *daemon, table bool) {
	t.Helper()
	r := l.Router
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
	if table && !strings.Contains(d.log(), "nftables table inet wanpin") {
		t.Error("the log does not name the missing table")
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
