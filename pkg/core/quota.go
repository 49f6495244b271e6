package core

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/quota"
)

// QuotaSaveInterval is how often, at most, the counts are written while
// they grow: a crash loses at most this much counting. A quota used up,
// reset, set or starting again is written at once, and so is every
// count at stop.
const QuotaSaveInterval = time.Minute

// QuotaState is what the machine knows of one uplink's data quota.
type QuotaState struct {
	// Limit is the bytes the period allows: the file's quota, or the
	// admin's (Raised) until the next reload or period.
	Limit     uint64
	Raised    bool
	Start     time.Time // the period's start
	NextReset time.Time
	Used      uint64 // bytes both ways in this period
	Exhausted bool   // Used >= Limit
	// Seen is the traffic meter's total at the last reading; Known says
	// whether there was one since the quota was set up (a quota that a
	// reload adds takes its first reading as the base).
	Seen  uint64
	Known bool
}

func (q QuotaState) usage() quota.Usage { return quota.Usage{PeriodStart: q.Start, Used: q.Used} }

// describe is the quota's state in words, for the log.
func (q QuotaState) describe(cfg *config.Quota) string {
	return fmt.Sprintf("%s of %s used since %s (%s, next reset %s)", quota.FormatSize(q.Used), quota.FormatSize(q.Limit),
		q.Start.Format("2006-01-02 15:04 MST"), cfg.Period, q.NextReset.Format("2006-01-02 15:04 MST"))
}

// syncQuotas sets up the quota of every uplink that has one in the
// configuration, and forgets the others'. restored is what the state
// file kept (at start): a count of the period at falls in is taken up,
// one of an older period is dropped. A quota that existed already keeps
// its count; its limit becomes the file's (an admin's `quota set` ends).
func (s *State) syncQuotas(r *Result, at time.Time, restored map[string]quota.Usage, starting bool) (save bool) {
	old := s.Quotas
	s.Quotas = map[string]QuotaState{}
	for _, u := range s.Config.Uplinks {
		if u.Quota == nil {
			continue
		}
		start, next := quota.Bounds(at, u.Quota.Period, u.Quota.ResetDay)
		q, had := old[u.Name]
		if !had {
			q = QuotaState{Exhausted: false, Known: starting}
			if ru, ok := restored[u.Name]; ok {
				switch {
				case ru.PeriodStart.Equal(start):
					q.Used = ru.Used
				case ru.PeriodStart.Before(start):
					r.log(slog.LevelInfo, "quota period began anew while wanpin was stopped", "uplink", u.Name,
						"dropped", quota.FormatSize(ru.Used), "period_was", ru.PeriodStart.Format(time.RFC3339),
						"period_now", start.Format(time.RFC3339))
					save = true
				default:
					// A count from the future: the clock went back. It is
					// the best there is.
					q.Used = ru.Used
					save = true
				}
			}
		} else {
			if !at.Before(q.NextReset) {
				// The period ended before a reading noticed it.
				r.log(slog.LevelInfo, "quota period began", "uplink", u.Name, "counted", quota.FormatSize(q.Used),
					"period", string(u.Quota.Period), "start", start.Format(time.RFC3339), "next_reset", next.Format(time.RFC3339))
				q.Used, save = 0, true
			}
			if q.Raised {
				r.log(slog.LevelInfo, "quota set by the admin ends with the reload", "uplink", u.Name,
					"was", quota.FormatSize(q.Limit), "now", quota.FormatSize(u.Quota.Limit))
			}
		}
		q.Limit, q.Raised, q.Start, q.NextReset = u.Quota.Limit, false, start, next
		s.Quotas[u.Name] = q
	}
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if _, ok := s.Quotas[name]; !ok {
			r.log(slog.LevelInfo, "quota removed by the reload", "uplink", name, "counted", quota.FormatSize(old[name].Used))
		}
	}
	return save
}

// noteQuotas marks each quota used up or available again, with one log
// line and its reason, and tells whether any changed.
func (s *State) noteQuotas(r *Result, why map[string]string) bool {
	changed := false
	for _, u := range s.Config.Uplinks {
		q, ok := s.Quotas[u.Name]
		if !ok {
			continue
		}
		ex := q.Used >= q.Limit
		if ex == q.Exhausted {
			continue
		}
		q.Exhausted = ex
		s.Quotas[u.Name] = q
		changed = true
		reason := why[u.Name]
		if ex {
			if reason == "" {
				reason = "data quota used up"
			}
			r.log(slog.LevelWarn, "quota used up", "uplink", u.Name, "used", q.Used, "quota", q.Limit,
				"action", string(u.Quota.Action), "reason", reason+": "+q.describe(u.Quota))
		} else {
			r.log(slog.LevelInfo, "quota available again", "uplink", u.Name, "used", q.Used, "quota", q.Limit,
				"reason", reason+": "+q.describe(u.Quota))
		}
	}
	return changed
}

// saveQuotas asks for the counts to be written now.
func (s *State) saveQuotas(r *Result, at time.Time) {
	if len(s.Quotas) == 0 {
		return
	}
	out := make(map[string]quota.Usage, len(s.Quotas))
	for name, q := range s.Quotas {
		out[name] = q.usage()
	}
	r.add(SaveQuota{Usage: out})
	s.QuotaSaved, s.QuotaDirty = at, false
}

// countTraffic takes a reading of the traffic meter: each quota's
// uplink's bytes since the last one are counted, a period that ended
// starts again from zero, and a quota used up or available again
// changes the balancing.
func (s *State) countTraffic(r *Result, at time.Time, bytes map[string]uint64) {
	if len(s.Quotas) == 0 {
		return
	}
	now := false
	why := map[string]string{}
	for _, u := range s.Config.Uplinks {
		q, ok := s.Quotas[u.Name]
		if !ok {
			continue
		}
		if start, next := quota.Bounds(at, u.Quota.Period, u.Quota.ResetDay); start.After(q.Start) {
			r.log(slog.LevelInfo, "quota period began", "uplink", u.Name, "counted", quota.FormatSize(q.Used),
				"period", string(u.Quota.Period), "start", start.Format(time.RFC3339), "next_reset", next.Format(time.RFC3339))
			if q.Raised {
				q.Limit, q.Raised = u.Quota.Limit, false
			}
			q.Start, q.NextReset, q.Used = start, next, 0
			why[u.Name] = "a new " + string(u.Quota.Period) + " period began"
			now = true
		}
		total, seen := bytes[u.Name]
		switch {
		case !seen:
		case !q.Known:
			q.Known = true
		case total > q.Seen:
			q.Used += total - q.Seen
			s.QuotaDirty = true
		}
		if seen {
			q.Seen = total
		}
		s.Quotas[u.Name] = q
	}
	changed := s.noteQuotas(r, why)
	if changed || now || s.QuotaDirty && at.Sub(s.QuotaSaved) >= QuotaSaveInterval {
		s.saveQuotas(r, at)
	}
	if changed {
		s.reconcile(r, at, "quota")
	}
}

// quotaCommand is `wanpin quota reset|set UPLINK`.
func (s *State) quotaCommand(r *Result, at time.Time, in QuotaCommand) {
	if r.Err = s.checkUplink(in.Uplink); r.Err != nil {
		return
	}
	q, ok := s.Quotas[in.Uplink]
	if !ok {
		r.Err = fmt.Errorf("uplink %q has no quota (set quota = \"20GB\" in its [[uplink]])", in.Uplink)
		return
	}
	var why string
	if in.Reset {
		r.log(slog.LevelInfo, "quota reset", "uplink", in.Uplink, "was", quota.FormatSize(q.Used), "by", "admin")
		q.Used = 0
		why = "reset by the admin (wanpin quota reset " + in.Uplink + ")"
	} else {
		if in.Limit == 0 {
			r.Err = fmt.Errorf("a quota must be at least 1 byte")
			return
		}
		fileLimit := s.Config.Uplinks[slices.IndexFunc(s.Config.Uplinks, func(u config.Uplink) bool { return u.Name == in.Uplink })].Quota.Limit
		r.log(slog.LevelInfo, "quota set", "uplink", in.Uplink, "was", quota.FormatSize(q.Limit), "now", quota.FormatSize(in.Limit),
			"until", "the next reload, restart or period", "by", "admin")
		q.Limit, q.Raised = in.Limit, in.Limit != fileLimit
		why = "set to " + quota.FormatSize(in.Limit) + " by the admin (wanpin quota set)"
	}
	s.Quotas[in.Uplink] = q
	changed := s.noteQuotas(r, map[string]string{in.Uplink: why})
	s.saveQuotas(r, at)
	if changed {
		s.reconcile(r, at, "admin")
	}
}

// quotaSpent is how an uplink's used-up quota bears on its state:
// with quota_action = "off" it is taken out as maintenance would, with
// "last-resort" it stays usable but is chosen last (Build).
func (s *State) quotaSpent(u config.Uplink, st *UplinkState, rs *Reasons) {
	q, ok := s.Quotas[u.Name]
	if !ok || !q.Exhausted || u.Quota == nil || !st.LinkUp() {
		return
	}
	if u.Quota.Action == config.QuotaOff {
		st.SetUnhealthy()
		why := "data quota used up (quota_action = \"off\"): " + q.describe(u.Quota)
		*rs = Reasons{why, why}
		return
	}
	st.Exhausted = true
}

// QuotaReport is an uplink's quota in a Status.
type QuotaReport struct {
	Limit       uint64    `json:"limit_bytes"`
	Used        uint64    `json:"used_bytes"`
	Period      string    `json:"period"` // monthly or daily
	ResetDay    int       `json:"reset_day,omitempty"`
	PeriodStart time.Time `json:"period_start"`
	NextReset   time.Time `json:"next_reset"`
	Exhausted   bool      `json:"exhausted"`
	Action      string    `json:"action"` // last-resort or off
	// Raised: the limit is the admin's (wanpin quota set), until the
	// next reload, restart or period.
	Raised bool `json:"raised"`
}

func (s State) quotaReport(u config.Uplink) *QuotaReport {
	q, ok := s.Quotas[u.Name]
	if !ok || u.Quota == nil {
		return nil
	}
	qr := &QuotaReport{Limit: q.Limit, Used: q.Used, Period: string(u.Quota.Period), PeriodStart: q.Start, NextReset: q.NextReset,
		Exhausted: q.Exhausted, Action: string(u.Quota.Action), Raised: q.Raised}
	if u.Quota.Period == quota.Monthly {
		qr.ResetDay = u.Quota.ResetDay
	}
	return qr
}
