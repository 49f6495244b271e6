// Package dnslearn learns the addresses of configured domains from the DNS
// answers the router forwards or receives, so that a domain policy
// ("route example.com and its subdomains through uplink X") has the
// addresses in its nftables set before the LAN host's first packet to
// them.
//
// The daemon holds DNS answers with nftables rules that log them to an
// NFLOG group and drop them (pkg/rules lays them out):
//
//   - answers arriving from an uplink for a LAN host, in prerouting after
//     conntrack and before dstnat (`ct status snat` or `fib daddr type !=
//     local`), prefix PrefixHold;
//   - answers the router's own resolvers send to LAN hosts and to local
//     programs, in output before conntrack, except the re-injected ones
//     (their SO_MARK), prefix PrefixHold;
//   - answers arriving from an uplink for the router itself, and TCP
//     answers, only copied (prefix PrefixCopy, not dropped).
//
// A Listener receives the held packet through NFLOG, parses the DNS message
// (Learn), calls its handler synchronously (where the daemon adds the
// learned addresses to its sets) and only then re-injects the original
// packet with a raw socket whose SO_MARK is Options.Mark. The re-injected
// packet takes the router's output path: to the LAN host, or to a local
// program through lo when the router's resolver answered it. TCP answers
// are learned from when a whole message is in one segment.
//
// Re-injection sends the packet as it came, except that the UDP checksum
// (and the IPv4 header checksum) are recomputed: a packet that arrived
// over veth or an offloading NIC may be CHECKSUM_PARTIAL, its checksum
// field not final. A datagram that conntrack reassembled and that is
// longer than the route's MTU is fragmented again (IPv4, and IPv6 without
// extension headers). The TTL or hop limit is not decremented. The mark
// also takes part in routing (ip rules on fwmark), so X must route as
// unmarked traffic to the LAN does. Destinations the raw socket cannot
// reach without a zone (IPv6 link-local) are not supported: such a packet
// counts as a re-injection error, lost.
//
// Where they are held matters. Held before NAT undoes the masquerade
// (prerouting) or before conntrack (output), the re-injected packet is,
// to conntrack in the output hook, the very reply it expects: it matches
// the query's entry, NAT undoes the masquerade there (LOCAL_OUT is a
// destination-NAT hook) and reroutes it to the LAN host, and the
// router's firewall sees it as ct state established. Held after the
// un-NAT (priority -90), the re-injected packet server:53 -> LAN host
// matched no entry: a new one, whose NAT null binding remapped the source
// port, so it had to be notracked, and a firewall that drops what is not
// established (most do) then dropped the router's own resolver's answers.
// Answers for the router itself are never held: re-injected, a packet for
// a local address comes in through lo, and a socket bound to the
// uplink's device (systemd-resolved's per-link servers, dnsmasq's
// server=addr@wan, wanpin's own DNS probes) never sees it. The router's
// resolver's own answer, held in output, gives its clients the same
// guarantee instead.
package dnslearn

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Matcher says which configured domain, if any, a name belongs to: the
// domain itself or any of its subdomains. A Matcher is immutable and safe
// for concurrent use.
type Matcher struct {
	domains map[string]struct{} // lower case, no trailing dot
}

// NewMatcher validates and normalises domains: lower case, the trailing
// dot optional, labels of 1 to 63 letters, digits, '-' or '_' (no '-' at
// either end of a label), 253 characters at most. Duplicates are fine. It
// names the first invalid domain in its error.
func NewMatcher(domains []string) (*Matcher, error) {
	m := &Matcher{domains: make(map[string]struct{}, len(domains))}
	for i, d := range domains {
		n, err := NormaliseDomain(d)
		if err != nil {
			return nil, fmt.Errorf("dnslearn: domain %d %q: %w", i+1, d, err)
		}
		m.domains[n] = struct{}{}
	}
	return m, nil
}

// NormaliseDomain is d as a Matcher keeps it (lower case, no trailing
// dot), or why it is not a domain name a policy can take.
func NormaliseDomain(d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	switch {
	case d == "":
		return "", errors.New("empty domain name (the root would match every name)")
	case strings.HasPrefix(d, "*."):
		return "", errors.New("no wildcards: a domain matches its subdomains already")
	case len(d) > 253:
		return "", fmt.Errorf("%d characters, at most 253", len(d))
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" {
			return "", errors.New("empty label")
		}
		if len(label) > 63 {
			return "", fmt.Errorf("label %q is longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("label %q has %q: only letters, digits, '-' and '_'", label, c)
			}
		}
	}
	return d, nil
}

// Len is the number of distinct domains.
func (m *Matcher) Len() int {
	if m == nil {
		return 0
	}
	return len(m.domains)
}

// Match returns the most specific configured domain that is name or a
// parent of name (case-insensitive, the trailing dot optional). It costs
// one map lookup per label of name, whatever the number of domains. A nil
// Matcher matches nothing.
func (m *Matcher) Match(name string) (domain string, ok bool) {
	if m == nil || len(m.domains) == 0 {
		return "", false
	}
	name = strings.TrimSuffix(name, ".")
	if hasUpper(name) {
		name = strings.ToLower(name)
	}
	for name != "" {
		if _, ok := m.domains[name]; ok {
			return name, true
		}
		i := strings.IndexByte(name, '.')
		if i < 0 {
			break
		}
		name = name[i+1:]
	}
	return "", false
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return true
		}
	}
	return false
}

// Learned is one address of a configured domain seen in a DNS answer.
type Learned struct {
	Domain string        // the configured domain that matched (normalised)
	Name   string        // the question's name (lower case, no trailing dot)
	Addr   netip.Addr    // from an A or AAAA record on the question's CNAME chain
	TTL    time.Duration // the smallest TTL along the chain to Addr
}

// MaxChain is the longest CNAME chain Learn follows; a longer one, or a
// loop, teaches nothing.
const MaxChain = 16

// Learn parses one DNS message and returns the addresses it teaches about
// m's domains. For each question it follows the CNAME chain in the answer
// section (CNAME records whose owner is the current name) and, for each
// domain the question name or a name on the chain matches (in chain
// order, from the question on), returns every A and AAAA record of
// class IN whose owner is on the chain, with TTL the smallest of the
// record's and of the CNAMEs' leading to it. Records of other names are
// ignored, so an answer cannot teach addresses of names the question did
// not lead to.
//
// A message that is not a response, has an rcode other than success or is
// truncated teaches nothing, without error; so do a CNAME loop and a chain
// longer than MaxChain. Learn errs only when msg does not parse.
func Learn(msg []byte, m *Matcher) ([]Learned, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, fmt.Errorf("dnslearn: header: %w", err)
	}
	if !h.Response || h.RCode != dnsmessage.RCodeSuccess || h.Truncated || m.Len() == 0 {
		return nil, nil
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil, fmt.Errorf("dnslearn: question: %w", err)
	}
	type cname struct {
		target string
		ttl    uint32
	}
	type addr struct {
		owner string
		addr  netip.Addr
		ttl   uint32
	}
	var (
		cnames map[string]cname
		addrs  []addr
	)
	for {
		rh, err := p.AnswerHeader()
		if err == dnsmessage.ErrSectionDone {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dnslearn: answer: %w", err)
		}
		if rh.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				return nil, fmt.Errorf("dnslearn: answer: %w", err)
			}
			continue
		}
		owner := canonical(rh.Name)
		switch rh.Type {
		case dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				return nil, fmt.Errorf("dnslearn: CNAME of %s: %w", owner, err)
			}
			if cnames == nil {
				cnames = make(map[string]cname)
			}
			if _, dup := cnames[owner]; !dup {
				cnames[owner] = cname{canonical(r.CNAME), rh.TTL}
			}
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return nil, fmt.Errorf("dnslearn: A of %s: %w", owner, err)
			}
			addrs = append(addrs, addr{owner, netip.AddrFrom4(r.A), rh.TTL})
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return nil, fmt.Errorf("dnslearn: AAAA of %s: %w", owner, err)
			}
			addrs = append(addrs, addr{owner, netip.AddrFrom16(r.AAAA), rh.TTL})
		default:
			if err := p.SkipAnswer(); err != nil {
				return nil, fmt.Errorf("dnslearn: answer: %w", err)
			}
		}
	}
	if len(addrs) == 0 {
		return nil, nil
	}
	var out []Learned
	for _, q := range qs {
		if q.Class != dnsmessage.ClassINET {
			continue
		}
		qname := canonical(q.Name)
		// ttlTo[name] is the smallest CNAME TTL on the way from qname to name.
		ttlTo := map[string]uint32{qname: ^uint32(0)}
		// Every domain a name on the chain matches, not just the first:
		// www.example.com CNAME edge.cdn.example.net teaches a policy for
		// cdn.example.net as well as one for example.com, and the first
		// of them in the file steers. Had only the question's domain
		// learned it, a policy listed earlier for the CDN's domain
		// would never see the address.
		var domains []string
		match := func(name string) {
			if d, ok := m.Match(name); ok && !slices.Contains(domains, d) {
				domains = append(domains, d)
			}
		}
		match(qname)
		cur, bad := qname, false
		for {
			c, ok := cnames[cur]
			if !ok {
				break
			}
			if _, loop := ttlTo[c.target]; loop || len(ttlTo) > MaxChain {
				bad = true
				break
			}
			ttlTo[c.target] = min(ttlTo[cur], c.ttl)
			cur = c.target
			match(cur)
		}
		if bad || len(domains) == 0 {
			continue
		}
		for _, domain := range domains {
			seen := make(map[netip.Addr]int)
			for _, a := range addrs {
				via, ok := ttlTo[a.owner]
				if !ok {
					continue
				}
				ttl := time.Duration(min(via, a.ttl)) * time.Second
				if i, dup := seen[a.addr]; dup {
					out[i].TTL = min(out[i].TTL, ttl)
					continue
				}
				seen[a.addr] = len(out)
				out = append(out, Learned{Domain: domain, Name: qname, Addr: a.addr, TTL: ttl})
			}
		}
	}
	return out, nil
}

// canonical is a name in lower case without its trailing dot.
func canonical(n dnsmessage.Name) string {
	return strings.ToLower(strings.TrimSuffix(n.String(), "."))
}
