package bus

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/policy"
)

// TestAllow: a user gets a burst, then the rate; users are apart.
func TestAllow(t *testing.T) {
	c := newCallers()
	now := time.Unix(1e9, 0)
	c.now = func() time.Time { return now }
	for i := range ExplainBurst {
		if !c.allow(1000, ExplainRate, ExplainBurst) {
			t.Fatalf("call %d of the burst refused", i+1)
		}
	}
	if c.allow(1000, ExplainRate, ExplainBurst) {
		t.Fatal("a call beyond the burst allowed")
	}
	if !c.allow(1001, ExplainRate, ExplainBurst) {
		t.Fatal("another user refused for the first one's calls")
	}
	now = now.Add(time.Second / ExplainRate)
	if !c.allow(1000, ExplainRate, ExplainBurst) || c.allow(1000, ExplainRate, ExplainBurst) {
		t.Fatal("not one call per 1/rate after the burst")
	}
	// Over a minute at twice the rate, half get through.
	allowed := 0
	for range 60 * 2 * ExplainRate {
		now = now.Add(time.Second / (2 * ExplainRate))
		if c.allow(1000, ExplainRate, ExplainBurst) {
			allowed++
		}
	}
	if want := 60 * ExplainRate; allowed < want-1 || allowed > want+1 {
		t.Errorf("%d calls allowed in a minute, want %d", allowed, want)
	}
	now = now.Add(time.Hour)
	for i := range ExplainBurst {
		if !c.allow(1000, ExplainRate, ExplainBurst) {
			t.Fatalf("after an hour, call %d refused: the burst is not back", i+1)
		}
	}
}

// TestCallersBounded: however many users call, what is remembered of
// them stays bounded.
func TestCallersBounded(t *testing.T) {
	c := newCallers()
	now := time.Unix(1e9, 0)
	c.now = func() time.Time { return now }
	for uid := range uint32(10 * maxCallers) {
		c.allow(uid+1, ExplainRate, ExplainBurst)
		now = now.Add(time.Second)
	}
	if n := len(c.buckets); n > maxCallers {
		t.Errorf("%d buckets remembered, want at most %d", n, maxCallers)
	}
}

// TestRootNotLimited: root's Explains are never limited (the shipped
// policy lets only root own the name, so the test bus's caller is root).
// An unprivileged caller's are tested end to end (e2e, as nobody).
func TestRootNotLimited(t *testing.T) {
	_, c := serve(t)
	ctx := context.Background()
	for i := range 3 * ExplainBurst {
		if _, err := c.Explain(ctx, policy.Flow{Dst: netip.MustParseAddr("203.0.113.10")}); err != nil {
			t.Fatalf("root's explain %d: %v", i+1, err)
		}
	}
}
