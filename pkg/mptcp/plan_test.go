package mptcp

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func ep(id uint8, addr string, ifindex int, f Flags) Endpoint {
	return Endpoint{ID: id, Addr: netip.MustParseAddr(addr), Ifindex: ifindex, Flags: f}
}

func opsText(ops []Op) string {
	var s []string
	for _, o := range ops {
		s = append(s, o.String())
	}
	return strings.Join(s, "\n")
}

// fakeKernel applies ops to a list, as the kernel would, and counts
// writes.
type fakeKernel struct {
	eps    []Endpoint
	writes int
}

func (k *fakeKernel) Endpoints() ([]Endpoint, error) { return append([]Endpoint(nil), k.eps...), nil }
func (k *fakeKernel) Add(e Endpoint) error {
	k.writes++
	k.eps = append(k.eps, e)
	return nil
}
func (k *fakeKernel) Delete(id uint8) error {
	k.writes++
	for i, e := range k.eps {
		if e.ID == id {
			k.eps = append(k.eps[:i], k.eps[i+1:]...)
			return nil
		}
	}
	return nil
}
func (k *fakeKernel) SetFlags(n Endpoint) error {
	k.writes++
	for i, e := range k.eps {
		if e.ID == n.ID {
			k.eps[i].Flags = e.Flags&^changeable | n.Flags&changeable
		}
	}
	return nil
}

// TestCompute walks a router's life one state at a time: each step's
// want is planned against the kernel state the previous step left, and
// the plan is checked as ip-like text, then applied to a fake kernel
// (and planned again: nothing more to do).
func TestCompute(t *testing.T) {
	foreign := ep(1, "203.0.113.9", 0, Subflow) // an admin's `ip mptcp endpoint add`
	k := &fakeKernel{eps: []Endpoint{foreign}}
	steps := []struct {
		name        string
		want        []Endpoint
		ops         string
		foreignAddr string
	}{
		{"first uplink: the top ID", []Endpoint{ep(0, "192.0.2.10", 3, Subflow)},
			"add 192.0.2.10 id 255 subflow ifindex 3", ""},
		{"same again: nothing", []Endpoint{ep(0, "192.0.2.10", 3, Subflow)}, "", ""},
		{"two more, highest ID first, in address order", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow), ep(0, "192.0.2.10", 3, Subflow), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"add 198.51.100.10 id 254 subflow ifindex 4\nadd 2001:db8::10 id 253 subflow backup ifindex 5", ""},
		{"a tier change: backup set in place", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup), ep(0, "192.0.2.10", 3, Subflow), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"set flags 198.51.100.10 id 254 subflow backup ifindex 4", ""},
		{"fullmesh set in place too", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup|Fullmesh), ep(0, "192.0.2.10", 3, Subflow), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"set flags 198.51.100.10 id 254 subflow backup fullmesh ifindex 4", ""},
		{"uplink 1 down: deleted, others kept", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup|Fullmesh), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"delete 192.0.2.10 id 255 subflow ifindex 3", ""},
		{"uplink 1 back: its ID again, the highest free", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup|Fullmesh), ep(0, "192.0.2.10", 3, Subflow), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"add 192.0.2.10 id 255 subflow ifindex 3", ""},
		{"a new ifindex (pppN): replaced under the same ID", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup|Fullmesh), ep(0, "192.0.2.10", 9, Subflow), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"delete 192.0.2.10 id 255 subflow ifindex 3\nadd 192.0.2.10 id 255 subflow ifindex 9", ""},
		{"subflow to signal: SET_FLAGS cannot, replaced", []Endpoint{
			ep(0, "198.51.100.10", 4, Subflow|Backup|Fullmesh), ep(0, "192.0.2.10", 9, Signal), ep(0, "2001:db8::10", 5, Subflow|Backup)},
			"delete 192.0.2.10 id 255 subflow ifindex 9\nadd 192.0.2.10 id 255 signal ifindex 9", ""},
		{"the admin's address wanted: left alone and reported; stale deleted first", []Endpoint{
			ep(0, "203.0.113.9", 6, Subflow), ep(0, "2001:db8::10", 5, Subflow), ep(0, "192.0.2.20", 7, Subflow)},
			"delete 198.51.100.10 id 254 subflow backup fullmesh ifindex 4\ndelete 192.0.2.10 id 255 signal ifindex 9\n" +
				"set flags 2001:db8::10 id 253 subflow ifindex 5\nadd 192.0.2.20 id 255 subflow ifindex 7", "203.0.113.9"},
		{"nothing wanted: only wanpin's removed", nil,
			"delete 2001:db8::10 id 253 subflow ifindex 5\ndelete 192.0.2.20 id 255 subflow ifindex 7", ""},
	}
	for _, s := range steps {
		p, err := Compute(k.eps, s.want)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := opsText(p.Ops); got != s.ops {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", s.name, got, s.ops)
		}
		var fa []string
		for _, f := range p.Foreign {
			fa = append(fa, f.Addr.String())
		}
		if got := strings.Join(fa, " "); got != s.foreignAddr {
			t.Errorf("%s: foreign %q, want %q", s.name, got, s.foreignAddr)
		}
		ch, err := Sync(k, s.want)
		if err != nil {
			t.Fatal(err)
		}
		if opsText(ch.Applied) != s.ops {
			t.Errorf("%s: Sync applied\n%s", s.name, opsText(ch.Applied))
		}
		if k.eps[0] != foreign {
			t.Fatalf("%s: the admin's endpoint became %v", s.name, k.eps[0])
		}
		w := k.writes
		if ch, err := Sync(k, s.want); err != nil || len(ch.Applied) != 0 || k.writes != w {
			t.Errorf("%s: a second Sync applied %v (%v)", s.name, ch.Applied, err)
		}
	}
}

func TestComputeIDs(t *testing.T) {
	// IDs taken by anyone are skipped; the block runs out at FirstID.
	cur := []Endpoint{ep(255, "192.0.2.1", 0, Subflow), ep(254, "192.0.2.2", 0, 0)}
	p, err := Compute(cur, []Endpoint{ep(0, "192.0.2.1", 0, Subflow), ep(0, "192.0.2.3", 0, Subflow)})
	if err != nil {
		t.Fatal(err)
	}
	if got := opsText(p.Ops); got != "delete 192.0.2.2 id 254\nadd 192.0.2.3 id 254 subflow" {
		t.Errorf("got\n%s", got)
	}
	var full []Endpoint
	var want []Endpoint
	for id := FirstID; id <= LastID; id++ {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(id)})
		full = append(full, Endpoint{ID: uint8(id), Addr: a, Flags: Subflow})
		want = append(want, Endpoint{Addr: a, Flags: Subflow})
	}
	if _, err := Compute(full, append(want, ep(0, "192.0.2.99", 0, Subflow))); err == nil || !strings.Contains(err.Error(), "no free ID") {
		t.Errorf("a full block: %v", err)
	}
}

func TestComputeRefuses(t *testing.T) {
	for _, w := range [][]Endpoint{
		{{Flags: Subflow}},
		{ep(0, "192.0.2.1", 0, Signal|Fullmesh)},
		{ep(0, "192.0.2.1", 0, Subflow|0x100)},
		{ep(0, "192.0.2.1", -1, Subflow)},
		{ep(0, "192.0.2.1", 0, Subflow), ep(0, "::ffff:192.0.2.1", 0, Backup)},
	} {
		if _, err := Compute(nil, w); err == nil {
			t.Errorf("Compute(%v) accepted", w)
		}
	}
	// Fullmesh onto a signal endpoint: not in place (the kernel refuses
	// it), so the plan is delete+add, and validate refuses the want.
	if setFlagsCan(ep(255, "192.0.2.1", 0, Signal), ep(255, "192.0.2.1", 0, Signal|Fullmesh)) {
		t.Error("setFlagsCan allowed fullmesh on a signal endpoint")
	}
}

func TestLimitsFor(t *testing.T) {
	for _, c := range []struct {
		n          int
		have, want Limits
	}{
		{0, Limits{2, 0}, Limits{2, 0}},
		{1, Limits{2, 0}, Limits{2, 0}},
		{2, Limits{2, 0}, Limits{2, 1}}, // a new namespace's defaults
		{4, Limits{2, 0}, Limits{3, 3}},
		{4, Limits{8, 1}, Limits{8, 3}}, // the admin's 8 subflows kept
		{20, Limits{0, 0}, Limits{8, 8}},
	} {
		if got := LimitsFor(c.n, c.have); got != c.want {
			t.Errorf("LimitsFor(%d, %+v) = %+v, want %+v", c.n, c.have, got, c.want)
		}
	}
}

func TestFlagsString(t *testing.T) {
	if got := (Subflow | Backup | 0x40).String(); got != "subflow backup 0x40" {
		t.Errorf("got %q", got)
	}
	if got := (Signal | implicit).String(); got != "signal implicit" {
		t.Errorf("got %q", got)
	}
}

func TestOrphaned(t *testing.T) {
	eps := []Endpoint{
		ep(255, "192.0.2.1", 3, Subflow),
		ep(254, "198.51.100.1", 4, Subflow|Backup),
		ep(253, "203.0.113.1", 5, Signal),
		ep(1, "203.0.113.2", 0, Subflow), // the admin's
	}
	n := Counts{Subflows: map[netip.Addr]int{netip.MustParseAddr("192.0.2.1"): 2}, Connections: 2}
	if got := Orphaned(eps, n); len(got) != 1 || got[0].ID != 254 {
		t.Errorf("Orphaned = %v, want the endpoint 254", got)
	}
	if got := Orphaned(eps, Counts{}); got != nil {
		t.Errorf("Orphaned with no connection = %v", got)
	}
	// A dual-stack router with IPv4 connections only: its IPv6
	// endpoints cannot have subflows on them, they are not orphans.
	eps6 := append(slices.Clone(eps[:2]), ep(252, "2001:db8::1", 3, Subflow), ep(251, "::ffff:198.51.100.7", 4, Subflow))
	if got := Orphaned(eps6, n); len(got) != 2 || got[0].ID != 254 || got[1].ID != 251 {
		t.Errorf("Orphaned with IPv4 subflows only = %v, want the endpoints 254 and 251", got)
	}
	n6 := Counts{Subflows: map[netip.Addr]int{netip.MustParseAddr("2001:db8::1"): 1}, Connections: 1}
	if got := Orphaned(eps6, n6); len(got) != 0 {
		t.Errorf("Orphaned with IPv6 subflows only = %v, want none (no IPv4 subflow anywhere)", got)
	}
	k := &fakeKernel{eps: slices.Clone(eps)}
	if err := Refresh(k, eps[1]); err != nil || k.writes != 2 {
		t.Errorf("Refresh: %v, %d writes", err, k.writes)
	}
	if err := Refresh(k, eps[3]); err == nil {
		t.Error("Refresh of the admin's endpoint went ahead")
	}
}

// refusing is a kernel without SET_FLAGS (before 5.18).
type refusing struct{ fakeKernel }

func (k *refusing) SetFlags(Endpoint) error { k.writes++; return errors.New("operation not supported") }

func TestSyncSetFlagsFallback(t *testing.T) {
	k := &refusing{fakeKernel{eps: []Endpoint{ep(255, "192.0.2.1", 3, Subflow)}}}
	ch, err := Sync(k, []Endpoint{ep(0, "192.0.2.1", 3, Subflow|Backup)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := opsText(ch.Applied), "delete 192.0.2.1 id 255\nadd 192.0.2.1 id 255 subflow backup ifindex 3"; got != want {
		t.Errorf("applied\n%s\nwant\n%s", got, want)
	}
	if k.eps[0] != ep(255, "192.0.2.1", 3, Subflow|Backup) {
		t.Errorf("kernel has %v", k.eps)
	}
}

// With a record of what wanpin added, an endpoint another program put
// into a hole of the block (an id-less add) is somebody else's: kept,
// its ID skipped, its address left to it.
func TestComputeOwned(t *testing.T) {
	cur := []Endpoint{ep(255, "192.0.2.1", 3, Subflow), ep(254, "192.0.2.50", 0, Signal), ep(253, "192.0.2.2", 0, Signal)}
	mine := func(e Endpoint) bool { return e.ID == 255 }
	p, err := ComputeOwned(cur, []Endpoint{ep(0, "192.0.2.1", 3, Subflow), ep(0, "192.0.2.2", 4, Subflow), ep(0, "192.0.2.3", 4, Subflow)}, mine)
	if err != nil {
		t.Fatal(err)
	}
	if got := opsText(p.Ops); got != "add 192.0.2.3 id 252 subflow ifindex 4" {
		t.Errorf("ops:\n%s", got)
	}
	if len(p.Foreign) != 1 || p.Foreign[0].ID != 253 {
		t.Errorf("foreign %v, want the other program's 192.0.2.2", p.Foreign)
	}
	// Without the record, the ID block alone: both would be taken for
	// wanpin's and changed.
	p, _ = Compute(cur, []Endpoint{ep(0, "192.0.2.1", 3, Subflow)})
	if got := opsText(p.Ops); !strings.Contains(got, "delete 192.0.2.50 id 254") {
		t.Errorf("ID block only:\n%s", got)
	}
}
