package rules

import (
	"slices"
	"time"

	"github.com/google/nftables"
)

// Memory is what a table's sticky and learned sets hold: the one state
// wanpin keeps in the kernel that its configuration cannot build again
// (which source sticks to which uplink, which address a DNS answer gave
// a domain policy). Apply carries it over every replacement of a table
// that is there. A clean stop deletes the table and the memory with it,
// and a host whose resolver cached an answer, or a source whose next
// connection must keep its address, would be balanced afresh after a
// restart; so the daemon takes the memory at its stop (Manager.Memory),
// writes it down, and hands it to the next start (Manager.Seed), whose
// first Apply creates the sets with it, each entry with the time it had
// left less the time the daemon was away.
type Memory struct {
	Taken time.Time            `json:"taken"`
	Sets  map[string]MemorySet `json:"sets"`
}

// MemorySet is one set's entries and its key type, which must be the
// same when they come back (a changed sticky_by starts empty).
type MemorySet struct {
	KeyType  string       `json:"key_type"`
	KeyBytes uint32       `json:"key_bytes"`
	Elems    []MemoryElem `json:"elems"`
	// A sticky set's balancer ("" for the default balancing) and
	// uplink: its name carries the uplink's mark index, which a start
	// with the uplinks reordered gives another uplink, so the entries
	// go back by uplink, not by name.
	Sticky bool   `json:"sticky,omitempty"`
	Policy string `json:"policy,omitempty"`
	Uplink string `json:"uplink,omitempty"`
}

// MemoryElem is one entry: its key, the time it had left, and its
// comment (a learned address's DNS name).
type MemoryElem struct {
	Key     []byte        `json:"key"`
	Left    time.Duration `json:"left"`
	Comment string        `json:"comment,omitempty"`
}

// MemoryCap bounds the entries Memory takes (about 100 bytes each
// written down), whatever the sets' sizes allow: 64 uplinks with sticky
// sets of 65,535 sources would be 8 million.
const MemoryCap = 1 << 18

// maxLearnedLeft is the longest a learned address steers
// (config.MaxDomainTTL): a seed never outlives it.
const maxLearnedLeft = 24 * time.Hour

// Len is the number of entries.
func (mem Memory) Len() int {
	n := 0
	for _, s := range mem.Sets {
		n += len(s.Elems)
	}
	return n
}

// Memory reads what the sticky and learned sets of the table applied
// last hold (an empty Memory where there is no table). Not dns_alive:
// the learner's liveness is its own, and carried into a start it would
// hold DNS answers before anyone listens for them.
func (m *Manager) Memory() (Memory, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem := Memory{Taken: time.Now(), Sets: map[string]MemorySet{}}
	if err := m.check(); err != nil {
		return mem, err
	}
	// No table (nothing applied, or removed already): nothing read.
	dumped, err := m.dumpTimed(m.table, func(s *nftables.Set) bool { return s.Name != setDNSAlive })
	if err != nil {
		return mem, err
	}
	n := 0
	for name, d := range dumped {
		ms := MemorySet{KeyType: d.set.KeyType.Name, KeyBytes: d.set.KeyType.Bytes}
		if i := slices.IndexFunc(m.sticky, func(s StickySet) bool { return s.Name == name }); i >= 0 {
			ms.Sticky, ms.Policy, ms.Uplink = true, m.sticky[i].Policy, m.sticky[i].Uplink
		}
		for _, e := range d.elems {
			if n == MemoryCap {
				break
			}
			ms.Elems = append(ms.Elems, MemoryElem{Key: e.Key, Left: e.Timeout, Comment: e.Comment})
			n++
		}
		if len(ms.Elems) > 0 {
			mem.Sets[name] = ms
		}
	}
	return mem, nil
}

// Seed gives the next Apply the memory of the last run, used only if
// the kernel has no table of wanpin's then (after a clean stop); where
// it has one (a daemon killed outright), its own entries win. Used
// once either way.
func (m *Manager) Seed(mem Memory) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seed = &mem
}

// elements are the seed's entries for t's sets, at now: only sets t
// keeps (not dns_alive), of the same key type, entries with time left,
// none longer than its set's own timeout (sticky) or the longest TTL
// (learned), and no more than a set's size, which the kernel would
// refuse with the whole table.
func (mem *Memory) elements(t *table, now time.Time) map[string][]nftables.SetElement {
	away := max(now.Sub(mem.Taken), 0)
	// A sticky set's memory is found by its balancer, uplink and key,
	// not by its name (see MemorySet); a memory written before sets
	// were recorded so, by name.
	byUplink := map[string]string{} // "policy\x00uplink\x00key type" -> memory's set name
	for name, ms := range mem.Sets {
		if ms.Sticky {
			byUplink[ms.Policy+"\x00"+ms.Uplink+"\x00"+ms.KeyType] = name
		}
	}
	sticky := map[string]StickySet{}
	for _, st := range t.sticky {
		sticky[st.Name] = st
	}
	out := map[string][]nftables.SetElement{}
	for _, s := range t.sets {
		from := s.name
		if st, ok := sticky[s.name]; ok {
			if name, ok := byUplink[st.Policy+"\x00"+st.Uplink+"\x00"+s.key.Name]; ok {
				from = name
			} else if mem.Sets[from].Sticky {
				continue // that name held another uplink's sources
			}
		}
		ms, ok := mem.Sets[from]
		if !s.keep || s.name == setDNSAlive || !ok || ms.KeyType != s.key.Name || ms.KeyBytes != s.key.Bytes {
			continue
		}
		longest := maxLearnedLeft
		if s.dynamic {
			longest = s.timeout
		}
		size := int(s.size())
		var es []nftables.SetElement
		for _, e := range ms.Elems {
			left := min(e.Left-away, longest).Truncate(time.Millisecond)
			if left <= 0 || len(e.Key) != int(s.key.Bytes) {
				continue
			}
			if len(es) == size {
				break
			}
			es = append(es, nftables.SetElement{Key: e.Key, Timeout: left, Comment: e.Comment})
		}
		if len(es) > 0 {
			out[s.name] = es
		}
	}
	return out
}
