package daemon

import (
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/rules"
)

// The view lists the sets of the state published last, and reads the
// kernel at most once per StickyInterval whatever the callers.
func TestStickyView(t *testing.T) {
	reads := 0
	v := &stickyView{read: func([]rules.StickySet) (map[string][]rules.StickyEntry, error) {
		reads++
		return nil, nil
	}}
	up := []desired.Uplink{{Name: "a", Interface: "eth1", Mark: 0x100}, {Name: "b", Interface: "eth2", Mark: 0x200}}
	two := desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 1}, {Mark: 0x200, Weight: 1}}}
	plain := desired.NFT{Table: "wanpin", Mask: 0xff00, Uplinks: up, Default: desired.Both(two)}
	if sets, _, _ := v.snapshot(plain, 1); len(sets) != 0 || reads != 0 {
		t.Fatalf("no sticky balancer: %d sets, %d reads", len(sets), reads)
	}
	sticky := plain
	sticky.Default.Sticky = desired.Sticky{Timeout: time.Minute}
	sets, _, _ := v.snapshot(sticky, 2)
	if len(sets) != 4 || reads != 1 {
		t.Fatalf("after a reload that made the default sticky: %d sets, %d reads", len(sets), reads)
	}
	for range 10 {
		v.snapshot(sticky, 2)
	}
	if reads != 1 {
		t.Errorf("%d reads within StickyInterval, want 1", reads)
	}
}
