package rules

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// WatchDeletions reports, with the time it heard of it, every deletion of
// wanpin's table or its companion, by anyone: it listens to the kernel's
// nftables notifications (NFNLGRP_NFTABLES), so a firewall reload's
// `flush ruleset` on a kernel without the owner flag is noticed at once,
// not at the next poll. Wanpin's own replacements (delete and add in one
// transaction) are reported too; the receiver checks what is missing.
// Reports coalesce (the channel holds one). It returns once subscribed:
// a deletion after that is seen. A lost subscription is renewed, and
// reported as a deletion so the receiver looks again.
//
// It reads the notifications itself rather than through google/nftables'
// Monitor: a Monitor filtered to table deletions never delivers (its
// filter drops the NFT_MSG_NEWGEN message that ends each batch), and an
// unfiltered one decodes every rule and set element of every change,
// wanpin's own applies of 10,000 entries included, to find a table name.
func (m *Manager) WatchDeletions(ctx context.Context, log *slog.Logger) <-chan time.Time {
	out := make(chan time.Time, 1)
	report := func() {
		select {
		case out <- time.Now():
		default:
		}
	}
	first, err := m.subscribe()
	if err != nil {
		log.Warn("nftables notifications unavailable, polling only", "err", err)
	}
	go func() {
		backoff := 10 * time.Millisecond
		for ctx.Err() == nil {
			c := first
			first = nil
			if c == nil {
				if c, err = m.subscribe(); err != nil {
					log.Warn("subscribing to nftables notifications", "err", err)
				}
			}
			err := m.watch(ctx, c, report)
			if ctx.Err() != nil {
				return
			}
			log.Warn("nftables notifications lost, subscribing again", "err", err)
			report()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}()
	return out
}

func (m *Manager) subscribe() (*netlink.Conn, error) {
	cfg := &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)}
	if m.hasNS {
		cfg.NetNS = m.nsFD
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, err
	}
	// wanpin's own applies notify every rule and element: room for them,
	// so that an overrun (ENOBUFS: resubscribe and look) stays rare.
	_ = c.SetReadBuffer(4 << 20)
	return c, nil
}

func (m *Manager) watch(ctx context.Context, c *netlink.Conn, report func()) error {
	if c == nil {
		return errNoSubscription
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	delTable := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE)
	for {
		msgs, err := c.Receive()
		if err != nil {
			return err
		}
		for _, msg := range msgs {
			if msg.Header.Type != delTable || len(msg.Data) < 4 {
				continue
			}
			// nfgenmsg (4 bytes), then the table's attributes.
			ad, err := netlink.NewAttributeDecoder(msg.Data[4:])
			if err != nil {
				report() // cannot tell which table: look anyway
				continue
			}
			name := ""
			for ad.Next() {
				if ad.Type() == unix.NFTA_TABLE_NAME {
					name = ad.String()
				}
			}
			m.mu.Lock()
			ours := name == m.table || m.keep && name == KeepTable(m.table)
			m.mu.Unlock()
			if ours || name == "" {
				report()
			}
		}
	}
}

var errNoSubscription = errors.New("not subscribed")
