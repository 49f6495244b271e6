package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// HealthConfig is an uplink's [uplink.health] table: how wanpin probes the
// uplink through itself to notice an ISP that forwards nothing while the
// link stays up.
type HealthConfig struct {
	Method  string   // icmp (default), tcp, http, dns
	Targets []string // icmp: addresses; tcp: addr:port; http: URLs; dns: server[:port]
	DNSName string   // dns: the name asked for (default ".", the root)

	Interval  time.Duration // one round every interval
	Timeout   time.Duration // a probe not answered by then is lost
	DownAfter int           // failed rounds in a row to take the uplink down
	UpAfter   int           // good rounds in a row to bring it back
	Quorum    int           // targets that must answer for a round to be good
	MaxLoss   float64       // percent lost over Window rounds that fails a round; 0: off
	MaxRTT    time.Duration // median round trip that fails a round; 0: off
	Window    int           // rounds the loss is measured over
	HoldDown  time.Duration // how long it must stay healthy before it takes new connections
}

// Health defaults. A round starts every 500 ms and is lost 400 ms after it
// started; two lost rounds in a row take the uplink down. If the ISP dies
// just after a round's probes were answered, the next round is lost at
// 0.5+0.4 s and the one after at 1.0+0.4 s: the worst case is 1.4 s, the
// best 0.9 s. With the two targets an uplink normally has, that is 4 probe
// packets a second (plus as many answers). Coming back takes three good
// rounds and 2 s of hold-down, so an uplink that answers every other round
// never goes down, and one that dies and recovers within seconds does not
// take connections until it has stayed good for 2 s.
const (
	DefaultHealthInterval  = 500 * time.Millisecond
	DefaultHealthTimeout   = 400 * time.Millisecond
	DefaultHealthDownAfter = 2
	DefaultHealthUpAfter   = 3
	DefaultHealthWindow    = 10
	DefaultHealthHoldDown  = 2 * time.Second
)

var healthKeys = []string{"method", "targets", "dns_name", "interval", "timeout", "down_after",
	"up_after", "quorum", "max_loss", "max_rtt", "window", "hold_down"}

// health reads an [uplink.health] table.
func (p *parser) health(n node) *HealthConfig {
	if _, ok := n.v.(map[string]any); !ok {
		p.errorf(n, "health must be a table ([uplink.health]), got %s", describe(n.v))
		return nil
	}
	t := p.table(n)
	h := &HealthConfig{Method: "icmp", DNSName: ".", Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout,
		DownAfter: DefaultHealthDownAfter, UpAfter: DefaultHealthUpAfter, Quorum: 1,
		Window: DefaultHealthWindow, HoldDown: DefaultHealthHoldDown}
	methodNode, _ := p.get(t, "method")
	if methodNode.v != nil {
		if s, ok := p.str(methodNode); ok {
			switch s {
			case "icmp", "tcp", "http", "dns":
				h.Method = s
			default:
				p.errorf(methodNode, "method must be icmp, tcp, http or dns, got %q", s)
			}
		}
	}
	targets, ok := p.get(t, "targets")
	if !ok {
		p.errorf(targets, "targets is required")
	} else if list, ok := p.list(targets); ok {
		if len(list) == 0 {
			p.errorf(targets, "targets must not be empty")
		}
		for _, e := range list {
			s, ok := p.str(e)
			if !ok {
				continue
			}
			if err := checkTarget(h.Method, s); err != nil {
				p.errorf(e, "%v", err)
				continue
			}
			h.Targets = append(h.Targets, s)
		}
	}
	if n, ok := p.get(t, "dns_name"); ok {
		if s, ok := p.str(n); ok {
			h.DNSName = s
		}
	}
	p.duration(t, "interval", &h.Interval, false)
	p.duration(t, "timeout", &h.Timeout, false)
	p.duration(t, "max_rtt", &h.MaxRTT, false)
	p.duration(t, "hold_down", &h.HoldDown, true)
	for _, f := range []struct {
		key string
		dst *int
		hi  int64
	}{{"down_after", &h.DownAfter, 100}, {"up_after", &h.UpAfter, 100}, {"window", &h.Window, 1000}} {
		if n, ok := p.get(t, f.key); ok {
			if v, ok := p.integer(n, 1, f.hi); ok {
				*f.dst = int(v)
			}
		}
	}
	if n, ok := p.get(t, "quorum"); ok {
		if v, ok := p.integer(n, 1, 64); ok {
			h.Quorum = int(v)
			if len(h.Targets) > 0 && h.Quorum > len(h.Targets) {
				p.errorf(n, "quorum %d is more than the %d targets", h.Quorum, len(h.Targets))
			}
		}
	}
	if n, ok := p.get(t, "max_loss"); ok {
		var v float64
		switch x := n.v.(type) {
		case int64:
			v = float64(x)
		case float64:
			v = x
		default:
			p.errorf(n, "max_loss must be a percentage, got %s", describe(n.v))
		}
		if v < 0 || v > 100 {
			p.errorf(n, "max_loss must be 0..100 (percent), got %v", v)
		} else {
			h.MaxLoss = v
		}
	}
	if h.Timeout > h.Interval {
		n := p.field(t, "timeout")
		p.errorf(n, "timeout %v is longer than the interval %v", h.Timeout, h.Interval)
	}
	p.unknown(t, healthKeys)
	return h
}

// duration reads a duration written as a string ("500ms"). A bare number
// is refused: TOML would hand over 5, which time.Duration reads as 5 ns.
func (p *parser) duration(t *table, key string, dst *time.Duration, zeroOK bool) {
	n, ok := p.get(t, key)
	if !ok {
		return
	}
	s, isString := n.v.(string)
	if !isString {
		p.errorf(n, "%s must be a duration like \"500ms\", got %s", key, describe(n.v))
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.errorf(n, "%s: %q is not a duration like \"500ms\" or \"2s\"", key, s)
		return
	}
	if d < 0 || (d == 0 && !zeroOK) {
		p.errorf(n, "%s must be positive, got %s", key, s)
		return
	}
	*dst = d
}

// checkTarget checks a target has the form its method needs.
func checkTarget(method, s string) error {
	switch method {
	case "icmp":
		if _, err := netip.ParseAddr(s); err != nil {
			return fmt.Errorf("icmp target %q must be an IP address", s)
		}
	case "tcp", "dns":
		host, port := s, "53"
		if method == "tcp" || strings.Contains(s, "]:") || strings.Count(s, ":") == 1 {
			h, p, err := net.SplitHostPort(s)
			if err != nil {
				return fmt.Errorf("%s target %q must be address:port", method, s)
			}
			host, port = h, p
		}
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%s target %q: %q is not an IP address", method, s, host)
		}
		if _, err := net.LookupPort("tcp", port); err != nil || port == "0" {
			return fmt.Errorf("%s target %q: bad port %q", method, s, port)
		}
	case "http":
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("http target %q must be a URL like http://203.0.113.1/", s)
		}
	}
	return nil
}
