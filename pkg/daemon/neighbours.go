package daemon

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/neighbours"
	"github.com/wanpin/wanpin/pkg/neighbours/observe"
	"github.com/wanpin/wanpin/pkg/rules"
)

// NeighboursInterval is how often the router is looked at for other
// programs' rules that clash with wanpin's (a VPN started after it), off
// the loop: a dump of the ip rules, and of the nftables rules when their
// generation changed (observe.Reader: 0.17 ms a look when nothing did,
// against 68 ms for a dump of 5,000 iptables rules).
const NeighboursInterval = time.Second

// mine is what a configuration makes wanpin use.
func mine(cfg *config.Config) neighbours.Mine {
	return neighbours.Mine{Mask: cfg.MarkMask, Priority: cfg.RulePriority, Block: config.RuleBlock,
		Uplinks: len(cfg.Uplinks), Allow: cfg.AllowConflicts}
}

// checkNeighbours reads the router and judges it against cfg. A clash
// that would break traffic and that the file does not allow is an error,
// for a start or a reload to refuse.
func checkNeighbours(cfg *config.Config) (neighbours.Report, error) {
	snap, err := observe.Read(netns.None(), rules.DefaultTable, rules.KeepTable(rules.DefaultTable))
	if err != nil {
		return neighbours.Report{}, err
	}
	rep := neighbours.Analyze(snap, mine(cfg))
	if msg := rep.Error(); msg != "" {
		return rep, errors.New(msg)
	}
	return rep, nil
}

// watchNeighbours looks at the router every NeighboursInterval with the
// configuration the loop last stored in cfg, and hands the loop each
// set of findings that differs from the one before.
func (d *Daemon) watchNeighbours(ctx context.Context, cfg *atomic.Pointer[config.Config], out chan<- []neighbours.Finding) {
	t := time.NewTicker(NeighboursInterval)
	defer t.Stop()
	var last []neighbours.Finding
	first := true
	rd := &observe.Reader{NS: netns.None(), Own: []string{rules.DefaultTable, rules.KeepTable(rules.DefaultTable)}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		snap, err := rd.Read()
		if err != nil {
			d.log.Debug("reading other programs' rules", "err", err)
			continue
		}
		found := neighbours.Analyze(snap, mine(cfg.Load())).Findings
		if !first && slices.EqualFunc(found, last, func(a, b neighbours.Finding) bool { return a == b }) {
			continue
		}
		first, last = false, found
		select {
		case out <- found:
		case <-ctx.Done():
			return
		}
	}
}
