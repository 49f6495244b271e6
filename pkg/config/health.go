package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/inet"
)

// HealthConfig is an uplink's [uplink.health] table: how wanpin probes the
// uplink through itself to notice an ISP that forwards nothing while the
// link stays up.
type HealthConfig struct {
	Method  string   // icmp (default), tcp, http, dns
	Targets []Target // parsed once here; probes use them as they are
	DNSName string   // dns: the name asked for, type NS (default ".": every resolver has the root NS in its cache)

	Interval  time.Duration // one round every interval
	Timeout   time.Duration // a probe not answered by then is lost
	DownAfter int           // failed rounds in a row to take the uplink down
	UpAfter   int           // good rounds in a row to bring it back
	Quorum    int           // targets that must answer for a round to be good
	MaxLoss   float64       // percent of probes lost over the last Window rounds that fails a round; 0: off
	MaxRTT    time.Duration // median round trip that fails a round; 0: off
	Window    int           // rounds the loss is measured over
	HoldDown  time.Duration // how long it must stay healthy before it takes new connections
}

// Health defaults.
//
// Detection: a round starts every interval (fixed rate, whatever the
// previous round did) and is lost timeout after it started; down_after
// lost rounds in a row take the uplink down. If the ISP dies just after a
// round's probes were answered, the first lost round starts up to one
// interval later, so the worst case is
//
//	interval (until the next round starts) + interval*(down_after-1) + timeout
//	= 500ms + 500ms*1 + 400ms = 1.4 s
//
// and the best case (dead just before a round starts) 0.9 s. Both are below
// the 1.5 s the project promises.
//
// Probe traffic: one packet per target per round, 2 packets a second per
// target (plus as many answers): the 2 targets an uplink normally has cost
// 4 packets a second, and up to 5 targets stay within 10 a second.
//
// No flapping: a single lost round never takes an uplink down
// (down_after 2), so an ISP that answers every other round stays up.
// Coming back takes three good rounds in a row and 2 s of hold-down since
// the first of them, so an ISP that dies and recovers within seconds does
// not take connections until it has stayed good for 2 s. Worst-case
// recovery after the ISP comes back: interval (until a round starts) +
// hold_down + one round trip = 2.5 s and the round trip (hold_down,
// counted from the start of the first good round, outlasts the up_after-1
// = 2 further rounds: it is the 5th good round in a row that brings the
// uplink back).
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

// MinHealthInterval keeps a typo ("5us") from turning the probes into a
// flood: below it a round could not even finish.
const MinHealthInterval = 50 * time.Millisecond

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
	methodOK := true
	methodNode, _ := p.get(t, "method")
	if methodNode.v != nil {
		s, ok := p.str(methodNode)
		switch {
		case !ok:
			methodOK = false
		case s == "icmp", s == "tcp", s == "http", s == "dns":
			h.Method = s
		default:
			methodOK = false
			p.errorf(methodNode, "method must be icmp, tcp, http or dns, got %q", s)
		}
	}
	targets, ok := p.get(t, "targets")
	if !ok {
		p.errorf(targets, "targets is required")
	} else if list, ok := p.list(targets); ok {
		if len(list) == 0 {
			p.errorf(targets, "targets must not be empty")
		}
		if len(list) > MaxHealthTargets {
			// Every target is probed every round.
			p.errorf(list[MaxHealthTargets], "more than %d targets, the most an uplink probes", MaxHealthTargets)
		}
		seen := map[string]bool{}
		for _, e := range list {
			s, ok := p.str(e)
			// With an unknown method every target would look wrong:
			// the method's own message is enough.
			if !ok || !methodOK {
				continue
			}
			tg, err := ParseTarget(h.Method, s)
			if err != nil {
				p.errorf(e, "%v", err)
				continue
			}
			if seen[s] {
				p.errorf(e, "target %q is listed twice (it would count twice towards the quorum)", s)
				continue
			}
			seen[s] = true
			h.Targets = append(h.Targets, tg)
		}
	}
	if n, ok := p.get(t, "dns_name"); ok {
		if s, ok := p.str(n); ok {
			switch {
			case methodOK && h.Method != "dns" && s != ".":
				// A name with another method is a mistake (a DNS probe was
				// meant); the default itself is harmless, and the README's
				// table of every key shows it with icmp.
				p.errorf(n, "dns_name applies to method \"dns\" only, not %q", h.Method)
			case !validDNSName(s):
				p.errorf(n, "dns_name %q is not a domain name (labels of 1..63 characters, 253 in all; \".\" is the root)", s)
			default:
				h.DNSName = s
			}
		}
	}
	intervalOK := p.duration(t, "interval", &h.Interval, false)
	if intervalOK && h.Interval < MinHealthInterval {
		p.errorf(p.field(t, "interval"), "interval must be at least %v, got %v", MinHealthInterval, h.Interval)
		intervalOK = false
	}
	timeoutOK := p.duration(t, "timeout", &h.Timeout, false)
	maxRTTOK := p.duration(t, "max_rtt", &h.MaxRTT, false)
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
		if v, ok := p.integer(n, 1, MaxHealthTargets); ok {
			h.Quorum = int(v)
			if len(h.Targets) > 0 && h.Quorum > len(h.Targets) {
				p.errorf(n, "quorum %d is more than the %d targets", h.Quorum, len(h.Targets))
			}
		}
	}
	if n, ok := p.get(t, "max_loss"); ok {
		switch x := n.v.(type) {
		case int64, float64:
			v, _ := x.(float64)
			if i, isInt := x.(int64); isInt {
				v = float64(i)
			}
			if v < 0 || v > 100 || v != v {
				p.errorf(n, "max_loss must be 0..100 (percent), got %v", v)
			} else {
				h.MaxLoss = v
			}
		default:
			p.errorf(n, "max_loss must be a percentage (0..100), got %s", describe(n.v))
		}
	}
	// Only durations that were read are compared: a broken one already
	// has its message and the default in its place would mislead.
	if intervalOK && timeoutOK && h.Timeout > h.Interval {
		p.errorf(p.field(t, "timeout"), "timeout %v is longer than the interval %v", h.Timeout, h.Interval)
	}
	if maxRTTOK && timeoutOK && h.MaxRTT > 0 && h.MaxRTT >= h.Timeout {
		p.errorf(p.field(t, "max_rtt"), "max_rtt %v is not below the timeout %v: it could never fail a round", h.MaxRTT, h.Timeout)
	}
	p.unknown(t, healthKeys)
	return h
}

// duration reads a duration written as a string ("500ms"). A bare number
// is refused: TOML would hand over 5, which time.Duration reads as 5 ns.
// It reports whether the value is usable (absent counts as usable: the
// default stands).
func (p *parser) duration(t *table, key string, dst *time.Duration, zeroOK bool) bool {
	n, ok := p.get(t, key)
	if !ok {
		return true
	}
	s, isString := n.v.(string)
	if !isString {
		p.errorf(n, "%s must be a duration like \"500ms\", got %s", key, describe(n.v))
		return false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.errorf(n, "%s: %q is not a duration like \"500ms\" or \"2s\"", key, s)
		return false
	}
	if d < 0 || (d == 0 && !zeroOK) {
		p.errorf(n, "%s must be positive, got %s", key, s)
		return false
	}
	*dst = d
	return true
}

// Target is one health target, parsed: what is probed, once and for all.
type Target struct {
	Text string         // as written, for reasons and logs
	Addr netip.AddrPort // the address probed; the port for tcp and dns (53 by default), 0 for icmp
	URL  string         // http: the URL fetched (its host is Addr)
}

// Family is the address family the target is probed over.
func (t Target) Family() inet.Family { return inet.Of(t.Addr.Addr()) }

// ParseTarget reads a target in the form its method needs. Hosts must be
// IP addresses: a name would be resolved by the system resolver, whose
// queries do not carry the uplink's mark and may leave by another uplink
// (or not at all when the ISP is dead).
func ParseTarget(method, s string) (Target, error) {
	t := Target{Text: s}
	switch method {
	case "icmp", "":
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return t, fmt.Errorf("icmp target %q must be an IP address", s)
		}
		t.Addr = netip.AddrPortFrom(a.Unmap(), 0)
	case "tcp", "dns":
		host, port := s, "53"
		if method == "tcp" || strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
			h, p, err := net.SplitHostPort(s)
			if err != nil {
				if method == "dns" {
					return t, fmt.Errorf("dns target %q must be address or address:port", s)
				}
				return t, fmt.Errorf("tcp target %q must be address:port", s)
			}
			host, port = h, p
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return t, fmt.Errorf("%s target %q: %q is not an IP address", method, s, host)
		}
		n, ok := parsePortNumber(port)
		if !ok {
			return t, fmt.Errorf("%s target %q: bad port %q (1..65535)", method, s, port)
		}
		t.Addr = netip.AddrPortFrom(a.Unmap(), n)
	case "http":
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil {
			return t, fmt.Errorf("http target %q must be a URL like http://203.0.113.1/ or http://[2001:db8::1]:8080/path", s)
		}
		a, err := netip.ParseAddr(u.Hostname())
		if err != nil || a.Zone() != "" {
			return t, fmt.Errorf("http target %q: host %q is not an IP address", s, u.Hostname())
		}
		n := uint16(80)
		if p := u.Port(); p != "" {
			var ok bool
			if n, ok = parsePortNumber(p); !ok {
				return t, fmt.Errorf("http target %q: bad port %q (1..65535)", s, p)
			}
		}
		t.Addr, t.URL = netip.AddrPortFrom(a.Unmap(), n), s
	default:
		return t, fmt.Errorf("unknown method %q", method)
	}
	return t, nil
}

// MustTargets parses targets that are known to be good (tests, examples).
func MustTargets(method string, ss ...string) []Target {
	out := make([]Target, len(ss))
	for i, s := range ss {
		t, err := ParseTarget(method, s)
		if err != nil {
			panic(err)
		}
		out[i] = t
	}
	return out
}

func parsePortNumber(s string) (uint16, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err == nil && n > 0
}

// validDNSName accepts a name in presentation form, with or without the
// final dot; "." alone is the root.
func validDNSName(s string) bool {
	if s == "." {
		return true
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if c <= ' ' || c >= 0x7f || c == '\\' {
				return false
			}
		}
	}
	return true
}

// ForFamily is the part of the health table that probes one address
// family: each family is probed, judged and taken out of service on its
// own, so an ISP whose IPv6 breaks while IPv4 works loses only its IPv6
// traffic. nil when the family has no targets of its own (its link state
// alone decides, or the other family's verdict). The quorum counts within
// a family and is capped at its number of targets.
func (h HealthConfig) ForFamily(f inet.Family) *HealthConfig {
	var ts []Target
	for _, t := range h.Targets {
		if t.Family() == f {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return nil
	}
	c := h
	c.Targets = ts
	c.Quorum = min(max(h.Quorum, 1), len(ts))
	return &c
}
