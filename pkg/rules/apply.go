package rules

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wanpin/wanpin/pkg/desired"
)

// DefaultTable is the table Remove and Present act on before any Apply.
const DefaultTable = "wanpin"

// Manager owns wanpin's nftables table through one lasting netlink
// connection. Its methods are safe for concurrent use.
type Manager struct {
	mu          sync.Mutex
	conn        *nftables.Conn
	table       string
	flags       nftables.TableFlags
	keeperFlags nftables.TableFlags
	closed      bool
	nsFD        int
	hasNS       bool
	// keep: the companion table (KeepTable) is built with every Apply;
	// only while wanpin's own table is not owned, where a ruleset flush
	// can delete it. staleChecked: the first Apply looked for companion
	// tables an earlier wanpin left that this one does not build.
	keep, staleChecked bool
	// lastCommit: how long the kernel took over the last Apply's batch,
	// waiting for its nftables commit lock included.
	lastCommit time.Duration
	// domains: the learned sets of the table applied last.
	domains []DomainSet
	// sticky: the sticky sets of the table applied last, so that carry
	// finds each uplink's memory when a reload gives it another mark.
	sticky []StickySet
	// seed: the memory of the last run, for the first Apply (Seed).
	seed *Memory

	// beforeFlush, when set (tests only), may queue more messages into the
	// batch right before it is sent.
	beforeFlush func(*nftables.Conn)
}

type options struct {
	netnsFD  int
	hasNetNS bool
	noOwner  bool
	table    string
}

// Option configures New.
type Option func(*options)

// WithNetNS makes the Manager work inside the network namespace open as fd
// (e.g. /run/netns/NAME). The caller keeps the fd open for the Manager's
// lifetime.
func WithNetNS(fd int) Option {
	return func(o *options) { o.netnsFD, o.hasNetNS = fd, true }
}

// WithoutOwner creates the table without the owner flag, as on kernels
// without persist: the table then outlives the process and anyone may
// change it. For tests and old kernels.
func WithoutOwner() Option { return func(o *options) { o.noOwner = true } }

// WithTable names the table Remove and Present act on before the first
// Apply (default "wanpin"). Apply always uses Spec.Table.
func WithTable(name string) Option { return func(o *options) { o.table = name } }

// New opens the lasting netlink connection. The owner flag binds the
// table's ownership to this very socket (its netlink port id): a transient
// connection per call would lose the table right after each Flush.
func New(opts ...Option) (*Manager, error) {
	o := options{table: DefaultTable}
	for _, opt := range opts {
		opt(&o)
	}
	copts := []nftables.ConnOption{nftables.AsLasting()}
	if o.hasNetNS {
		copts = append(copts, nftables.WithNetNSFd(o.netnsFD))
	}
	conn, err := nftables.New(copts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	m := &Manager{conn: conn, table: o.table, nsFD: o.netnsFD, hasNS: o.hasNetNS}
	rel, err := kernelRelease()
	if err != nil {
		_ = conn.CloseLasting()
		return nil, err
	}
	if !o.noOwner && ownerPersistSupported(rel) {
		m.flags = nftables.TableFlagOwner | nftables.TableFlagPersist
	}
	// Where wanpin's table is not owned, the companion table is (and
	// persists where the kernel can): `nft flush ruleset` skips it, so
	// existing connections keep their pins and their NAT while wanpin's
	// own table is being put back. An owned table needs no companion:
	// nobody else can delete it.
	if m.flags&nftables.TableFlagOwner == 0 && ownerSupported(rel) {
		m.keep = true
		m.keeperFlags = nftables.TableFlagOwner
		if ownerPersistSupported(rel) {
			m.keeperFlags |= nftables.TableFlagPersist
		}
	}
	return m, nil
}

// Owner reports whether the Manager creates its table with the owner and
// persist flags.
func (m *Manager) Owner() bool { return m.flags&nftables.TableFlagOwner != 0 }

func (m *Manager) check() error {
	if m.closed {
		return errors.New("rules: manager closed")
	}
	return nil
}

// Apply replaces the whole table with s in one transaction: the old table
// is deleted and the new one created in the same batch, so packets see
// either the old table or the new one, and a batch the kernel refuses
// changes nothing. Applying the same Spec again leaves exactly one, equal
// table. Later Remove and Present calls act on s.Table; a table of another
// name applied earlier is left alone.
func (m *Manager) Apply(s desired.NFT) error {
	if err := Validate(s); err != nil {
		return fmt.Errorf("invalid rules spec: %w", err)
	}
	t := build(s)
	if err := t.check(); err != nil {
		return fmt.Errorf("compiling rules spec: %w", err)
	}
	var kt *table
	if m.keep {
		kt = buildKeep(s)
		if err := kt.check(); err != nil {
			return fmt.Errorf("compiling the companion table: %w", err)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	c := m.conn
	nt := &nftables.Table{Name: t.name, Family: nftables.TableFamilyINet, Flags: m.flags}
	old, err := m.lookup(t.name)
	if err != nil {
		return err
	}

	carried := m.carry(t, old)
	if m.seed != nil {
		if old == nil {
			carried = m.seed.elements(t, time.Now())
		}
		// Once: where the kernel still has the table (a daemon killed
		// outright), its own entries are the fresher.
		m.seed = nil
	}
	m.replace(nt, old)
	if err := m.queue(t, nt, carried); err != nil {
		// queue fails only where the library recorded the error in the
		// connection: Flush then discards the batch without sending it.
		_ = c.Flush()
		return fmt.Errorf("building table %s: %w", t.name, err)
	}
	// The companion table goes in the same batch: packets see both old
	// tables or both new ones, and its chains (registered when the batch
	// is prepared) never leave the NAT hooks or conntrack without a user.
	if err := m.queueCompanions(t.name, kt); err != nil {
		_ = c.Flush()
		return err
	}
	if m.beforeFlush != nil {
		m.beforeFlush(c)
	}
	start := time.Now()
	err = c.Flush()
	m.lastCommit = time.Since(start)
	if err != nil {
		if old != nil && old.Flags&nftables.TableFlagOwner != 0 && errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("table is owned by another process (netlink port %d): %w", old.Owner, err)
		}
		return fmt.Errorf("replacing nftables table inet %s (%d sets, %d chains): %w",
			t.name, len(t.sets), len(t.chains), err)
	}
	m.table = t.name
	m.domains = t.domains
	m.sticky = t.sticky
	m.staleChecked = true
	return nil
}

// carry reads the elements the kernel's table old holds in t's keep sets
// (sticky sources, learned by the datapath; a domain policy's addresses,
// learned by the daemon from DNS answers), so that the batch that
// replaces the table re-creates them with the time each has left. A set
// whose key changed (sticky_by) starts empty; so does the set of an
// uplink no longer a candidate, which t has not: its sources are balanced
// afresh. An entry the datapath adds between this dump and the commit is
// lost (the source's next connection is balanced again): the window is
// the dump and the commit, a few milliseconds per apply. A failed dump
// loses the memory, not the apply.
func (m *Manager) carry(t *table, old *nftables.Table) map[string][]nftables.SetElement {
	if old == nil {
		return nil
	}
	// want maps each set of old to read to the set of t its entries go
	// to: the same name, except for sticky sets, which are named after
	// their uplink's mark index. A reload that gives an uplink another
	// mark (uplinks reordered, one removed before it, a new mark_mask)
	// would otherwise hand its remembered sources to whichever uplink
	// took its old mark; they follow the uplink instead.
	sticky := map[string]StickySet{}
	for _, st := range t.sticky {
		sticky[st.Name] = st
	}
	oldSticky := map[memoryKey]string{} // the old table's set of each memory
	for _, st := range m.sticky {
		oldSticky[st.memoryKey()] = st.Name
	}
	want := map[string]*set{}
	for _, s := range t.sets {
		if !s.keep {
			continue
		}
		st, isSticky := sticky[s.name]
		if !isSticky || m.sticky == nil {
			// Learned sets, and the first Apply over a table an earlier
			// process left (its sets' uplinks unknown): by name.
			want[s.name] = s
			continue
		}
		if name, ok := oldSticky[st.memoryKey()]; ok {
			want[name] = s
		}
	}
	if len(want) == 0 {
		return nil
	}
	dumped, err := m.dumpTimed(old.Name, func(os *nftables.Set) bool {
		s, ok := want[os.Name]
		return ok && os.KeyType.Name == s.key.Name && os.KeyType.Bytes == s.key.Bytes
	})
	if err != nil {
		return nil
	}
	out := map[string][]nftables.SetElement{}
	for name, d := range dumped {
		out[want[name].name] = d.elems
	}
	return out
}

// dumpTimed reads the elements of table's sets with timeouts that want
// takes (readSets), each with the time it has left as its timeout, the
// expired left out.
func (m *Manager) dumpTimed(table string, want func(*nftables.Set) bool) (map[string]setDump, error) {
	dumped, err := m.readSets(table, func(s *nftables.Set) bool { return s.HasTimeout && want(s) })
	if err != nil {
		return nil, err
	}
	for name, d := range dumped {
		kept := make([]nftables.SetElement, 0, len(d.elems))
		for _, e := range d.elems {
			if e.Expires <= 0 {
				continue
			}
			// The element's own timeout is what it has left; the
			// datapath's update sets a full one again (its dynset
			// carries the timeout).
			kept = append(kept, nftables.SetElement{Key: e.Key, Timeout: e.Expires, Comment: e.Comment})
		}
		dumped[name] = setDump{set: d.set, elems: kept}
	}
	return dumped, nil
}

// transient opens a connection for one read, in the Manager's namespace.
func (m *Manager) transient() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if m.hasNS {
		opts = append(opts, nftables.WithNetNSFd(m.nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	return c, nil
}

// replace queues the claim, delete and add of nt; old is the table as the
// kernel has it now, or nil. AddTable first so that DelTable never fails
// on a missing table: the kernel has no "delete if present" before 6.3
// (DESTROY), and Debian 12's 6.1 must work too. Its flags must be the
// flags the table has now, because on 6.18 an update that changes owner
// or persist on an existing table fails with EOPNOTSUPP (plain -> owner,
// or unsetting persist). On an orphan (owner socket gone: the kernel
// clears the owner bit and keeps persist) an update with the same flags
// is a no-op and anyone may then delete it; the final AddTable creates
// the table anew, owned by this socket, which is how a restarted daemon
// re-claims its table. A table owned by another live socket makes the
// batch fail with EPERM: another wanpin is running.
func (m *Manager) replace(nt, old *nftables.Table) {
	claim := *nt
	if old != nil {
		claim.Flags = old.Flags
	}
	m.conn.AddTable(&claim)
	m.conn.DelTable(nt)
	m.conn.AddTable(nt)
}

// queueCompanions queues the companion table kt (nil: none is wanted)
// and, on the first Apply, the deletion of companions an earlier wanpin
// left: the empty nat-hooks table of older versions, or a KeepTable
// from a run whose table was not owned.
func (m *Manager) queueCompanions(table string, kt *table) error {
	var stale []string
	if !m.staleChecked {
		stale = append(stale, legacyKeeper(table))
		if kt == nil {
			stale = append(stale, KeepTable(table))
		}
	}
	for _, name := range stale {
		old, err := m.lookup(name)
		if err != nil {
			return err
		}
		if old != nil {
			claim := *old
			m.conn.AddTable(&claim)
			m.conn.DelTable(old)
		}
	}
	if kt == nil {
		return nil
	}
	old, err := m.lookup(kt.name)
	if err != nil {
		return err
	}
	nt := &nftables.Table{Name: kt.name, Family: nftables.TableFamilyINet, Flags: m.keeperFlags}
	m.replace(nt, old)
	if err := m.queue(kt, nt, nil); err != nil {
		return fmt.Errorf("building table %s: %w", kt.name, err)
	}
	return nil
}

// check verifies the lookups of every rule against the sets, so that
// queue cannot fail half way through on its own account.
func (t *table) check() error {
	named := map[string]bool{}
	for _, s := range t.sets {
		if named[s.name] {
			return fmt.Errorf("set %s defined twice", s.name)
		}
		named[s.name] = true
	}
	for _, ch := range t.chains {
		for i, r := range ch.rules {
			anon := 0
			for _, e := range r.exprs {
				if d, ok := e.(*expr.Dynset); ok && !named[d.SetName] {
					return fmt.Errorf("chain %s rule %d: unknown set %s", ch.name, i, d.SetName)
				}
				l, ok := e.(*expr.Lookup)
				switch {
				case !ok:
				case l.SetName == "":
					anon++
				case !named[l.SetName]:
					return fmt.Errorf("chain %s rule %d: unknown set %s", ch.name, i, l.SetName)
				}
			}
			if anon != len(r.anon) {
				return fmt.Errorf("chain %s rule %d: %d anonymous lookups for %d sets", ch.name, i, anon, len(r.anon))
			}
		}
	}
	return nil
}

// queue adds chains, then sets and maps (their elements name chains as
// goto targets), then rules (they look sets up), all into the pending
// batch.
func (m *Manager) queue(t *table, nt *nftables.Table, carried map[string][]nftables.SetElement) error {
	c := m.conn
	chains := map[string]*nftables.Chain{}
	for _, ch := range t.chains {
		nc := &nftables.Chain{Name: ch.name, Table: nt}
		if h := ch.hook; h != nil {
			accept := nftables.ChainPolicyAccept
			nc.Type, nc.Hooknum, nc.Priority, nc.Policy = h.typ, h.hook, h.prio, &accept
		}
		chains[ch.name] = c.AddChain(nc)
	}
	sets := map[string]*nftables.Set{}
	for _, s := range t.sets {
		ns := s.nftSet(nt)
		if err := c.AddSet(ns, append(s.nftElements(), carried[s.name]...)); err != nil {
			return fmt.Errorf("adding set %s: %w", s.name, err)
		}
		sets[s.name] = ns
	}
	for _, ch := range t.chains {
		for i, r := range ch.rules {
			anon := r.anon
			exprs := slices.Clone(r.exprs)
			for j, e := range exprs {
				if d0, ok := e.(*expr.Dynset); ok {
					d := new(expr.Dynset)
					*d = *d0
					d.SetID = sets[d.SetName].ID
					exprs[j] = d
					continue
				}
				l0, ok := e.(*expr.Lookup)
				if !ok {
					continue
				}
				// Fragments (and so their expressions) are shared between
				// the rules of one policy: fill in a copy.
				l := new(expr.Lookup)
				*l = *l0
				exprs[j] = l
				if l.SetName == "" {
					// An anonymous set lives in the batch only: the
					// library names it __set%d and the rule finds it by
					// the transaction id.
					a := anon[0]
					anon = anon[1:]
					ns := a.nftSet(nt)
					if err := c.AddSet(ns, a.nftElements()); err != nil {
						return fmt.Errorf("adding anonymous set for chain %s rule %d: %w", ch.name, i, err)
					}
					l.SetName, l.SetID = ns.Name, ns.ID
					continue
				}
				l.SetID = sets[l.SetName].ID
			}
			c.AddRule(&nftables.Rule{Table: nt, Chain: chains[ch.name], Exprs: exprs})
		}
	}
	return nil
}

func (s *set) nftSet(nt *nftables.Table) *nftables.Set {
	ns := &nftables.Set{
		Table:     nt,
		Name:      s.name,
		Anonymous: s.anonymous,
		Constant:  s.anonymous,
		Interval:  s.interval,
		IsMap:     s.isMap,
		KeyType:   s.key,
		Size:      s.size(),
	}
	if s.isMap {
		ns.DataType = nftables.TypeVerdict
	}
	if s.dynamic {
		ns.Dynamic, ns.HasTimeout, ns.Timeout = true, true, s.timeout
	}
	if s.learned {
		ns.HasTimeout = true
	}
	if s.native {
		ns.KeyByteOrder = binaryutil.NativeEndian
	} else {
		ns.KeyByteOrder = binaryutil.BigEndian
	}
	return ns
}

func (s *set) nftElements() []nftables.SetElement {
	n := len(s.elems)
	if s.interval {
		n *= 2 // an interval is two kernel elements: its start and its end
	}
	out := make([]nftables.SetElement, 0, n)
	for _, e := range s.elems {
		out = append(out, nftables.SetElement{Key: e.key, VerdictData: e.verdict})
		if e.interv && e.end != nil {
			out = append(out, nftables.SetElement{Key: e.end, IntervalEnd: true})
		}
	}
	return out
}

// Remove deletes the table; a table that is not there is no error.
func (m *Manager) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return err
	}
	old, err := m.lookup(m.table)
	if err != nil || old == nil {
		return err
	}
	m.conn.DelTable(old)
	if m.keep {
		if keep, err := m.lookup(KeepTable(m.table)); err == nil && keep != nil {
			m.conn.DelTable(keep)
		}
	}
	if err := m.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing nftables table inet %s: %w", m.table, err)
	}
	return nil
}

// lookup returns the table as the kernel has it, or nil if absent.
func (m *Manager) lookup(name string) (*nftables.Table, error) {
	t, err := m.conn.ListTableOfFamily(name, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up nftables table inet %s: %w", name, err)
	}
	return t, nil
}

// Missing lists which of wanpin's tables (its own and, where it has one,
// the companion KeepTable) are not in the kernel, as "inet NAME".
func (m *Manager) Missing() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return nil, err
	}
	names := []string{m.table}
	if m.keep {
		names = append(names, KeepTable(m.table))
	}
	var out []string
	for _, name := range names {
		t, err := m.lookup(name)
		if err != nil {
			return nil, err
		}
		if t == nil {
			out = append(out, "inet "+name)
		}
	}
	return out, nil
}

// LastCommit is how long the kernel took to answer the last Apply's
// transaction. After a firewall reload most of a repair is spent here:
// the reloading nft's exit holds the namespace's nftables commit lock
// while the kernel waits out an RCU grace period for the objects the
// flush freed (10 to 25 ms on the lab machines; about 1 ms otherwise).
func (m *Manager) LastCommit() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastCommit
}

// Present reports whether the table is in the kernel.
func (m *Manager) Present() (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(); err != nil {
		return false, err
	}
	t, err := m.lookup(m.table)
	return t != nil, err
}

// Close closes the netlink connection. With the owner flag the kernel then
// orphans the table (persist keeps it, and traffic keeps flowing); the
// next Manager's Apply claims it again.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if err := m.conn.CloseLasting(); err != nil {
		return fmt.Errorf("closing nftables netlink connection: %w", err)
	}
	return nil
}
