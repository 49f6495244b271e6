package bus

import (
	"fmt"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

// ErrLimited: an unprivileged user called Explain faster than
// ExplainRate.
const ErrLimited = Interface + ".Error.LimitExceeded"

// Explain is open to every local user and costs the daemon one flow's
// evaluation against every policy: 0.9 ms at 10,000 policies (the
// compiled explainer, pkg/daemon), against some 0.15 ms for the D-Bus
// message itself. One user calling it in a loop could keep a core busy;
// limited, a user costs the daemon at most ExplainRate evaluations a
// second after a burst of ExplainBurst, 1% of a core at 10,000 policies.
// Root is not limited. Status is not limited: it copies the published
// status, and its own part of a call (the JSON) is a small share of what
// the message costs the daemon anyway, refused or not.
const (
	ExplainRate  = 10 // a second, per unprivileged user
	ExplainBurst = 20
)

// maxCallers bounds the callers remembered: beyond it they are forgotten
// at once and looked up again (a unique name is never reused on a bus,
// so a remembered uid never goes stale, it only takes room).
const maxCallers = 1024

// callers knows the uids of the connections that called, and the
// unprivileged users' budgets.
type callers struct {
	mu      sync.Mutex
	uids    map[dbus.Sender]uint32
	buckets map[uint32]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newCallers() *callers {
	return &callers{uids: map[dbus.Sender]uint32{}, buckets: map[uint32]*bucket{}, now: time.Now}
}

// uid returns the caller's uid, asking the bus once per connection.
func (c *callers) uid(conn *dbus.Conn, sender dbus.Sender) (uint32, error) {
	c.mu.Lock()
	uid, ok := c.uids[sender]
	c.mu.Unlock()
	if ok {
		return uid, nil
	}
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid); err != nil {
		return 0, fmt.Errorf("cannot tell who is calling: %w", err)
	}
	c.mu.Lock()
	if len(c.uids) >= maxCallers {
		clear(c.uids)
	}
	c.uids[sender] = uid
	c.mu.Unlock()
	return uid, nil
}

// allow takes one call from uid's budget: rate a second, burst at most.
func (c *callers) allow(uid uint32, rate, burst float64) bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buckets[uid]
	if b == nil {
		if len(c.buckets) >= maxCallers {
			// Full buckets are the same as none.
			for u, old := range c.buckets {
				if old.tokens+now.Sub(old.at).Seconds()*rate >= burst {
					delete(c.buckets, u)
				}
			}
		}
		b = &bucket{tokens: burst, at: now}
		c.buckets[uid] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// limitExplain refuses an unprivileged caller over its Explain budget.
func (s *Server) limitExplain(sender dbus.Sender) *dbus.Error {
	uid, err := s.callers.uid(s.conn, sender)
	if err != nil {
		return dbus.NewError(ErrFailed, []any{err.Error()})
	}
	if uid == 0 || s.callers.allow(uid, ExplainRate, ExplainBurst) {
		return nil
	}
	return dbus.NewError(ErrLimited, []any{fmt.Sprintf("at most %d explains a second per user (%d at once); try again in a moment", ExplainRate, ExplainBurst)})
}
