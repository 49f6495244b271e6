package mptcp

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// counting counts a Client's writes.
type counting struct {
	*Client
	writes int
}

func (c *counting) Add(e Endpoint) error      { c.writes++; return c.Client.Add(e) }
func (c *counting) Delete(id uint8) error     { c.writes++; return c.Client.Delete(id) }
func (c *counting) SetFlags(e Endpoint) error { c.writes++; return c.Client.SetFlags(e) }

func TestKernelSync(t *testing.T) {
	ns, c := newNS(t)
	idx := ifindex(t, ns, "a0")
	// An admin's endpoint, added the usual way (the kernel picks ID 1).
	ns.Run(t, "ip", "mptcp", "endpoint", "add", "192.0.2.3", "dev", "a0", "subflow")
	k := &counting{Client: c}
	want := []Endpoint{
		{Addr: netip.MustParseAddr("192.0.2.1"), Ifindex: idx, Flags: Subflow},
		{Addr: netip.MustParseAddr("2001:db8::1"), Ifindex: idx, Flags: Subflow | Backup},
		{Addr: netip.MustParseAddr("192.0.2.3"), Ifindex: idx, Flags: Subflow | Backup},
	}
	ch, err := Sync(k, want)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Applied) != 2 || len(ch.Foreign) != 1 || ch.Foreign[0].ID != 1 {
		t.Errorf("first Sync: %v, foreign %v", ch.Applied, ch.Foreign)
	}
	show := func() string { return ns.Run(t, "ip", "mptcp", "endpoint", "show") }
	want1 := "192.0.2.3 id 1 subflow dev a0 \n2001:db8::1 id 254 subflow backup dev a0 \n192.0.2.1 id 255 subflow dev a0 \n"
	if got := show(); got != want1 {
		t.Errorf("after Sync:\n%s\nwant\n%s", got, want1)
	}
	w := k.writes
	if ch, err := Sync(k, want); err != nil || len(ch.Applied) != 0 || k.writes != w {
		t.Errorf("a second Sync wrote %d times: %v (%v)", k.writes-w, ch.Applied, err)
	}

	// The kernel's ID for an id-less add, with wanpin holding 255: wraps
	// to the low IDs (2 here), outside the block.
	ns.Run(t, "ip", "mptcp", "endpoint", "add", "192.0.2.2", "subflow")
	if got := show(); !strings.Contains(got, "192.0.2.2 id 2 subflow") {
		t.Errorf("an id-less add beside wanpin's:\n%s", got)
	}

	// Tier change: backup off on 2001:db8::1 in place (same ID), the
	// admin's two endpoints untouched, the id-less one not reported
	// (its address is not wanted).
	want[1].Flags = Subflow
	ch, err = Sync(k, want)
	if err != nil {
		t.Fatal(err)
	}
	if got := opsText(ch.Applied); got != "set flags 2001:db8::1 id 254 subflow ifindex "+strconv.Itoa(idx) {
		t.Errorf("tier change applied %q", got)
	}
	if got := show(); !strings.Contains(got, "2001:db8::1 id 254 subflow dev a0") ||
		!strings.Contains(got, "192.0.2.3 id 1 subflow dev a0") || !strings.Contains(got, "192.0.2.2 id 2 subflow") {
		t.Errorf("after the tier change:\n%s", got)
	}

	// Nothing wanted: wanpin's endpoints gone, the admin's kept.
	if _, err := Sync(k, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := c.Endpoints()
	if ids := idsOf(got); !slices.Equal(ids, []uint8{1, 2}) {
		t.Errorf("after Sync(nil): %v", got)
	}
}

// TestKernelSetFlags pins what SET_FLAGS does on this kernel: it changes
// backup and fullmesh, silently ignores subflow and signal (hence delete
// and add for those), and refuses fullmesh on a signal endpoint.
func TestKernelSetFlags(t *testing.T) {
	_, c := newNS(t)
	a := netip.MustParseAddr("192.0.2.1")
	if err := c.Add(Endpoint{ID: 250, Addr: a, Flags: Subflow}); err != nil {
		t.Fatal(err)
	}
	get := func() Flags {
		eps, err := c.Endpoints()
		if err != nil || len(eps) != 1 {
			t.Fatalf("endpoints %v, %v", eps, err)
		}
		return eps[0].Flags
	}
	for _, s := range []struct{ set, want Flags }{
		{Subflow | Backup, Subflow | Backup},
		{Subflow | Backup | Fullmesh, Subflow | Backup | Fullmesh},
		{Subflow, Subflow},
		{Signal, Subflow}, // subflow/signal bits ignored
		{0, Subflow},
	} {
		if err := c.SetFlags(Endpoint{ID: 250, Addr: a, Flags: s.set}); err != nil {
			t.Fatalf("SetFlags(%s): %v", s.set, err)
		}
		if got := get(); got != s.want {
			t.Errorf("SetFlags(%q): flags %q, want %q", s.set, got, s.want)
		}
	}
	b := netip.MustParseAddr("192.0.2.2")
	if err := c.Add(Endpoint{ID: 249, Addr: b, Flags: Signal}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetFlags(Endpoint{ID: 249, Addr: b, Flags: Signal | Fullmesh}); err == nil {
		t.Error("fullmesh on a signal endpoint was accepted")
	} else {
		t.Logf("fullmesh on a signal endpoint: %v", err)
	}
}

func idsOf(eps []Endpoint) []uint8 {
	var ids []uint8
	for _, e := range eps {
		ids = append(ids, e.ID)
	}
	return ids
}

// TestKernelIDAllocation pins the kernel's choice of ID for an id-less
// add (`ip mptcp endpoint add ADDR subflow`), which wanpin's block is
// built around: the first free ID at or above the highest one given out
// since the last wrap, wrapping to 1 after 255. So 201 follows 200, a
// held 255 sends the search back to the low IDs, and a hole in the block
// at or above that cursor is taken (the gap documented at FirstID).
func TestKernelIDAllocation(t *testing.T) {
	ns, _ := newNS(t)
	for i := 10; i <= 16; i++ {
		ns.Run(t, "ip", "addr", "add", "198.51.100."+strconv.Itoa(i)+"/24", "dev", "a0")
	}
	add := func(addr string, id ...string) {
		ns.Run(t, append([]string{"ip", "mptcp", "endpoint", "add", addr, "subflow"}, id...)...)
	}
	add("198.51.100.10", "id", "200")
	add("198.51.100.11") // 201
	add("198.51.100.12", "id", "255")
	add("198.51.100.13")              // 1: wrapped
	add("198.51.100.14", "id", "254") // the cursor is now 254
	add("198.51.100.15", "id", "253")
	ns.Run(t, "ip", "mptcp", "endpoint", "delete", "id", "254")
	add("198.51.100.16") // the hole at 254
	got := ns.Run(t, "ip", "mptcp", "endpoint", "show")
	for _, want := range []string{"198.51.100.11 id 201 ", "198.51.100.13 id 1 ", "198.51.100.16 id 254 "} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
}
