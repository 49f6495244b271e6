package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wanpin/wanpin/internal/atomicfile"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/desired"
	"github.com/wanpin/wanpin/pkg/mptcp"
)

// MPTCPCountInterval paces the sock_diag dump that counts MPTCP subflows
// for status and metrics.
const MPTCPCountInterval = 5 * time.Second

// An endpoint of wanpin's from which no subflow is established while
// MPTCP connections exist (a subflow reset by a middlebox: the kernel
// never opens it again while the endpoint stays) is deleted and added
// again once it has been so for MPTCPOrphanAfter, and at most once an
// MPTCPRefreshEvery. Orphaned, it has no subflow the refresh could
// close.
const (
	MPTCPOrphanAfter  = 10 * time.Second
	MPTCPRefreshEvery = time.Minute
)

// mptcpState is what the executor keeps of the kernel's path manager:
// its client (opened when first needed), and the subflow counts of the
// last dump.
type mptcpState struct {
	client  *mptcp.Client
	want    desired.MPTCP
	counts  mptcp.Counts
	counted time.Time
	warned  bool // net.mptcp.enabled = 0 was reported
	// record: the endpoints wanpin added (ID -> address), kept in the
	// runtime directory so that a restart after a crash knows them. The
	// kernel keeps no owner: an id-less `ip mptcp endpoint add` can land
	// in a hole of wanpin's ID block, and only this record tells it
	// apart.
	record     map[uint8]netip.Addr
	recordPath string
	// orphaned: since when each endpoint address has had no subflow;
	// refreshed: when each was last refreshed.
	orphaned, refreshed map[netip.Addr]time.Time
}

// mptcpRecordPath is the record's file, one per network namespace.
func (d *Daemon) mptcpRecordPath() string { return d.runtimeFile("mptcp-endpoints") }

func (m *mptcpState) loadRecord(path string) {
	m.recordPath, m.record = path, map[uint8]netip.Addr{}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var r map[uint8]netip.Addr
	if json.Unmarshal(b, &r) == nil {
		m.record = r
	}
}

// note updates the record with what a Sync did and saves it (written
// to a temporary file and renamed: never half a record).
func (m *mptcpState) note(ops []mptcp.Op) error {
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		switch op.Kind {
		case mptcp.OpAdd:
			m.record[op.Endpoint.ID] = op.Endpoint.Addr.Unmap()
		case mptcp.OpDelete:
			delete(m.record, op.Endpoint.ID)
		}
	}
	if len(m.record) == 0 {
		if err := os.Remove(m.recordPath); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	b, _ := json.Marshal(m.record)
	if err := os.MkdirAll(filepath.Dir(m.recordPath), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(m.recordPath, b, 0o644)
}

func (m *mptcpState) owned(e mptcp.Endpoint) bool {
	a, ok := m.record[e.ID]
	return ok && a == e.Addr.Unmap()
}

// sync is SyncOwned with the record, which it keeps.
func (m *mptcpState) sync(want []mptcp.Endpoint) (mptcp.Changes, error) {
	ch, err := mptcp.SyncOwned(m.client, want, m.owned)
	if rerr := m.note(ch.Applied); rerr != nil && err == nil {
		err = fmt.Errorf("recording MPTCP endpoints in %s: %w", m.recordPath, rerr)
	}
	return ch, err
}

// applyMPTCP brings wanpin's endpoints to e. A failure is logged, not an
// apply error: MPTCP only adds subflows to what routing already does.
func (d *Daemon) applyMPTCP(e core.ApplyMPTCP) {
	m := &d.mptcp
	if m.client == nil {
		c, err := mptcp.Dial(0)
		if err != nil {
			d.log.Error("mptcp: no path manager", "err", err)
			return
		}
		m.client = c
		if m.record == nil {
			m.loadRecord(d.mptcpRecordPath())
		}
	}
	if e.MPTCP.Enabled && !m.warned {
		if b, err := os.ReadFile(filepath.Join(d.opts.ProcSys, "net/mptcp/enabled")); err == nil && strings.TrimSpace(string(b)) == "0" {
			d.log.Warn("mptcp: net.mptcp.enabled is 0: programs cannot open MPTCP sockets; endpoints are set all the same")
			m.warned = true
		}
	}
	var want []mptcp.Endpoint
	for _, ep := range e.MPTCP.Endpoints {
		ifi, err := net.InterfaceByName(ep.Interface)
		if err != nil {
			d.log.Warn("mptcp: endpoint without its interface", "uplink", ep.Uplink, "addr", ep.Addr, "err", err)
			continue
		}
		f := mptcp.Subflow
		if ep.Backup {
			f |= mptcp.Backup
		}
		want = append(want, mptcp.Endpoint{Addr: ep.Addr, Ifindex: ifi.Index, Flags: f})
	}
	ch, err := m.sync(want)
	if len(ch.Applied) > 0 {
		var ops []string
		for _, op := range ch.Applied {
			ops = append(ops, op.String())
		}
		d.log.Info("mptcp endpoints", "endpoints", len(want), "changes", strings.Join(ops, "; "))
	}
	for _, f := range ch.Foreign {
		d.log.Warn("mptcp: another program's endpoint holds an uplink's address; left alone", "endpoint", f.String())
	}
	if err != nil {
		d.log.Error("mptcp: endpoints", "err", err)
	}
	if e.MPTCP.Enabled {
		if l, raised, err := mptcp.RaiseLimits(m.client, e.MPTCP.Uplinks); err != nil {
			d.log.Error("mptcp: limits", "err", err)
		} else if raised {
			d.log.Info("mptcp limits raised", "subflows", l.Subflows, "add_addr_accepted", l.AddAddrAccepted)
		}
	}
	m.want = e.MPTCP
	if !e.MPTCP.Enabled {
		m.client.Close()
		m.client = nil
	}
}

// removeMPTCP deletes wanpin's endpoints (at teardown).
func (d *Daemon) removeMPTCP() error {
	m := &d.mptcp
	if m.client == nil {
		return nil
	}
	defer func() { m.client.Close(); m.client = nil }()
	if _, err := m.sync(nil); err != nil {
		return fmt.Errorf("removing MPTCP endpoints: %w", err)
	}
	return nil
}

// countMPTCP refreshes the subflow counts, at most once an interval and
// only while MPTCP is on.
func (d *Daemon) countMPTCP() {
	m := &d.mptcp
	if !m.want.Enabled || time.Since(m.counted) < MPTCPCountInterval {
		return
	}
	m.counted = time.Now()
	c, err := mptcp.Count(0)
	if err != nil {
		d.log.Debug("mptcp: counting subflows", "err", err)
		return
	}
	m.counts = c
	d.refreshOrphans(m.counted)
}

// refreshOrphans refreshes wanpin's endpoints that lost their subflows
// (see MPTCPOrphanAfter).
func (d *Daemon) refreshOrphans(now time.Time) {
	m := &d.mptcp
	if m.client == nil {
		return
	}
	eps, err := m.client.Endpoints()
	if err != nil {
		return
	}
	var mine []mptcp.Endpoint
	for _, e := range eps {
		if mptcp.Owned(e.ID) && m.owned(e) {
			mine = append(mine, e)
		}
	}
	if m.orphaned == nil {
		m.orphaned, m.refreshed = map[netip.Addr]time.Time{}, map[netip.Addr]time.Time{}
	}
	now4 := map[netip.Addr]bool{}
	for _, e := range mptcp.Orphaned(mine, m.counts) {
		a := e.Addr.Unmap()
		now4[a] = true
		since, ok := m.orphaned[a]
		if !ok {
			m.orphaned[a] = now
			continue
		}
		if now.Sub(since) < MPTCPOrphanAfter || now.Sub(m.refreshed[a]) < MPTCPRefreshEvery {
			continue
		}
		if err := mptcp.Refresh(m.client, e); err != nil {
			d.log.Warn("mptcp: refreshing an endpoint without subflows", "addr", a, "err", err)
			continue
		}
		m.refreshed[a] = now
		delete(m.orphaned, a)
		d.log.Info("mptcp endpoint refreshed", "addr", a, "reason", fmt.Sprintf("no subflow from it for %s on %d MPTCP connections", now.Sub(since).Round(time.Second), m.counts.Connections))
	}
	for a := range m.orphaned {
		if !now4[a] {
			delete(m.orphaned, a)
		}
	}
}

// mptcpReport fills the uplinks' MPTCP figures of s.
func (d *Daemon) mptcpReport(s *core.Status) {
	m := &d.mptcp
	if !m.want.Enabled {
		return
	}
	s.MPTCPConnections = m.counts.Connections
	for i := range s.Uplinks {
		u := &s.Uplinks[i]
		r := &core.MPTCPReport{}
		for _, ep := range m.want.Endpoints {
			if ep.Uplink == u.Name {
				r.Endpoints++
				r.Backup = ep.Backup
				r.Subflows += m.counts.Subflows[ep.Addr]
			}
		}
		u.MPTCP = r
	}
}
