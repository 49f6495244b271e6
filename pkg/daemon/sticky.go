package daemon

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/rules"
)

// StickyInterval bounds how often the sticky sets are read for status and
// explain: a read dumps every sticky set (up to rules.StickySize elements
// each), and explain is open to anyone.
const StickyInterval = time.Second

// StickyListed is how many remembered sources a status lists; it counts
// them all.
const StickyListed = 100

// stickyReader is an NFTables that can read the sticky sets (the real
// one, rules.Manager).
type stickyReader interface {
	StickyEntries([]rules.StickySet) (map[string][]rules.StickyEntry, error)
}

// stickyView is the sticky sets' content as last read, read again when
// asked and older than StickyInterval (and four times the last read's
// duration): however many callers, one dump at that pace.
type stickyView struct {
	read func([]rules.StickySet) (map[string][]rules.StickyEntry, error)

	mu      sync.Mutex
	gen     uint64 // the published state the sets were listed for
	listed  bool
	sets    []rules.StickySet
	entries map[string][]rules.StickyEntry
	at      time.Time
	took    time.Duration
}

// snapshot returns the sets of nft, the state published as gen, and
// what they held at the moment returned.
func (v *stickyView) snapshot(nft desired.NFT, gen uint64) ([]rules.StickySet, map[string][]rules.StickyEntry, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.listed || v.gen != gen {
		// rules.StickySets builds the table: once per published state.
		v.gen, v.listed, v.sets, v.at = gen, true, rules.StickySets(nft), time.Time{}
	}
	if len(v.sets) == 0 {
		return nil, nil, time.Time{}
	}
	if time.Since(v.at) > max(StickyInterval, 4*v.took) {
		start := time.Now()
		entries, err := v.read(v.sets)
		v.took = time.Since(start)
		if err == nil {
			v.entries, v.at = entries, start
		}
	}
	return v.sets, v.entries, v.at
}

// stickyLookup answers core's questions from a snapshot.
func stickyLookup(sets []rules.StickySet, entries map[string][]rules.StickyEntry, at time.Time) core.StickyLookup {
	return func(pol string, f inet.Family, mark uint32, src, dst netip.Addr) (time.Duration, bool) {
		i := slices.IndexFunc(sets, func(s rules.StickySet) bool {
			return s.Policy == pol && s.Family == f && s.Mark == mark
		})
		if i < 0 {
			return 0, false
		}
		for _, e := range entries[sets[i].Name] {
			if e.Src == src && e.Dst == dst {
				if left := e.Left - time.Since(at); left > 0 {
					return left, true
				}
			}
		}
		return 0, false
	}
}

// stickyReports counts, per uplink, the sources remembered for it and
// lists the first StickyListed, soonest forgotten last.
func stickyReports(sets []rules.StickySet, entries map[string][]rules.StickyEntry, at time.Time) (map[string]int, []core.StickyReport, int) {
	counts := map[string]int{}
	var list []core.StickyReport
	total := 0
	since := time.Since(at)
	for _, s := range sets {
		for _, e := range entries[s.Name] {
			left := e.Left - since
			if left <= 0 {
				continue
			}
			counts[s.Uplink]++
			total++
			list = append(list, core.StickyReport{Policy: s.Policy, Source: e.Src, Destination: e.Dst,
				Uplink: s.Uplink, Left: core.Seconds(left.Round(time.Second).Seconds())})
		}
	}
	slices.SortStableFunc(list, func(a, b core.StickyReport) int {
		switch {
		case a.Left > b.Left:
			return -1
		case a.Left < b.Left:
			return 1
		}
		return 0
	})
	if len(list) > StickyListed {
		list = list[:StickyListed]
	}
	return counts, list, total
}
