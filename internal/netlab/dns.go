package netlab

// ISP resolvers and a DNS forwarder on the router.
//
// With Options.Resolvers (or DHCP), ISP i runs dnsmasq as its resolver on
// ResolverAddr4(i) and ResolverAddr6(i), addresses of its own that the
// rest of the lab's internet reaches through ISP i only: the server
// namespace, the lab's core, routes them to ISP i and forwards between
// ISPs, and each ISP sends what is not its customer's to the core. The
// resolver answers only its customer: a query whose source is not the
// customer's address (the router's address at another ISP, arriving
// through the core) is dropped by the ISP's nft table and counted
// (ResolverDrops), so it times out, as with many real ISPs.
//
// The resolvers know, under example.test (everything else there is
// NXDOMAIN, anything else REFUSED):
//
//	www.example.test        A ServerAddr4, AAAA ServerAddr6
//	isp<i>.example.test     A ResolverAddr4(i), AAAA ResolverAddr6(i)
//	resolver.example.test   A ResolverAddr4(i), AAAA ResolverAddr6(i),
//	                        TXT "isp<i>": which resolver answered

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// ResolverAddr4 is ISP i's resolver.
func ResolverAddr4(i int) string { return fmt.Sprintf("203.0.113.%d", 52+i) }

// ResolverAddr6 is ISP i's resolver's IPv6 address.
func ResolverAddr6(i int) string { return fmt.Sprintf("2001:db8:53::%d", i) }

// Names the resolvers know.
const (
	NameWWW      = "www.example.test"
	NameResolver = "resolver.example.test"
)

// NameISP is the name that resolves to ISP i's resolver.
func NameISP(i int) string { return fmt.Sprintf("isp%d.example.test", i) }

// The ends of the link between ISP i and the server (see build).
func linkISP4(i int) string    { return fmt.Sprintf("203.0.113.%d", 4*(i-1)+17) }
func linkServer4(i int) string { return fmt.Sprintf("203.0.113.%d", 4*(i-1)+18) }
func linkISP6(i int) string    { return fmt.Sprintf("2001:db8:20%d::1", i) }
func linkServer6(i int) string { return fmt.Sprintf("2001:db8:20%d::2", i) }

func (l *Lab) resolversOn() bool { return l.opts.Resolvers || len(l.opts.DHCP) > 0 }

// buildResolvers gives each ISP its resolver address and a default route
// to the core, makes the server namespace route the resolvers and forward
// between ISPs, and starts the resolvers.
func (l *Lab) buildResolvers() error {
	if !l.resolversOn() {
		return nil
	}
	var core []string
	for i := 1; i <= len(l.isps); i++ {
		if err := l.ip(l.ISP(i),
			fmt.Sprintf("addr add %s/32 dev lo", ResolverAddr4(i)),
			fmt.Sprintf("addr add %s/128 dev lo nodad", ResolverAddr6(i)),
			"route add default via "+linkServer4(i),
			"route add ::/0 via "+linkServer6(i),
		); err != nil {
			return err
		}
		core = append(core,
			fmt.Sprintf("route add %s/32 via %s", ResolverAddr4(i), linkISP4(i)),
			fmt.Sprintf("route add %s/128 via %s", ResolverAddr6(i), linkISP6(i)),
		)
	}
	if err := l.ip(l.Server, core...); err != nil {
		return err
	}
	if err := l.sysctl(l.Server, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	for i := 1; i <= len(l.isps); i++ {
		if err := l.startResolver(i); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startResolver(i int) error {
	dir, err := l.workDir()
	if err != nil {
		return err
	}
	r4, r6 := ResolverAddr4(i), ResolverAddr6(i)
	p, err := l.Start(l.ISP(i), filepath.Join(dir, fmt.Sprintf("isp%d-dns.log", i)),
		"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--user=root", "--group=root",
		"--no-resolv", "--no-hosts", "--no-poll",
		"--port=53", "--listen-address="+r4+","+r6, "--bind-interfaces",
		"--local=/example.test/",
		fmt.Sprintf("--host-record=%s,%s,%s", NameWWW, ServerAddr4, ServerAddr6),
		fmt.Sprintf("--host-record=%s,%s,%s", NameISP(i), r4, r6),
		fmt.Sprintf("--host-record=%s,%s,%s", NameResolver, r4, r6),
		fmt.Sprintf("--txt-record=%s,isp%d", NameResolver, i),
		"--pid-file="+filepath.Join(dir, fmt.Sprintf("isp%d-dns.pid", i)),
		"--log-queries", "--log-facility=-",
	)
	if err != nil {
		return err
	}
	if err := l.waitListen(l.ISP(i), "-Hlun", "sport = :53", r4+":53", p); err != nil {
		return fmt.Errorf("lab: resolver of ISP %d: %w", i, err)
	}
	return nil
}

// ResolverDrops reads how many queries ISP i's resolver was sent by
// others than its customer, and dropped.
func (l *Lab) ResolverDrops(i int) (uint64, error) {
	if !l.resolversOn() {
		return 0, errors.New("lab: no resolvers (Options.Resolvers)")
	}
	return l.spoofed(i, "dns_foreign")
}

// StartForwarder runs a DNS forwarder on the router, as a home router
// runs one for its LAN: dnsmasq on LANRouter4 and LANRouter6, port 53,
// forwarding to the upstreams (each a dnsmasq server= value: an address,
// or address@interface or address@source to pin how it is reached), with
// no DHCP, no /etc/hosts and no /etc/resolv.conf. extra are more dnsmasq
// options ("--strict-order", "--cache-size=0", ...). It returns once the
// forwarder listens; it stops with the lab, or with the Proc's Close.
func (l *Lab) StartForwarder(upstreams []string, extra ...string) (*Proc, error) {
	if len(upstreams) == 0 {
		return nil, errors.New("lab: a forwarder needs an upstream")
	}
	dir, err := l.workDir()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.forwarders++
	n := l.forwarders
	l.mu.Unlock()
	args := []string{"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--user=root", "--group=root",
		"--no-resolv", "--no-hosts", "--no-poll",
		"--port=53", "--listen-address=" + LANRouter4 + "," + LANRouter6, "--bind-interfaces",
		"--pid-file=" + filepath.Join(dir, fmt.Sprintf("forwarder%d.pid", n)),
		"--log-queries", "--log-facility=-",
	}
	for _, u := range upstreams {
		args = append(args, "--server="+u)
	}
	args = append(args, extra...)
	p, err := l.Start(l.Router, filepath.Join(dir, fmt.Sprintf("forwarder%d.log", n)), args...)
	if err != nil {
		return nil, err
	}
	if err := l.waitListen(l.Router, "-Hlun", "sport = :53", LANRouter4+":53", p); err != nil {
		p.Close()
		return nil, fmt.Errorf("lab: forwarder: %w", err)
	}
	return p, nil
}

// ErrNoAnswer is Dig's error when no answer came (the server could not
// be reached, or the query was dropped).
var ErrNoAnswer = errors.New("no answer")

// Dig asks server, from namespace ns, for name with dig (one try, 1 s:
// more args such as "+time=3", "AAAA", "TXT", "-b", addr or "+tcp" are
// passed on after the defaults). It returns the records of the answer
// section as dig +short prints them, one a line. A response other than
// NOERROR is an error naming its status (NXDOMAIN, REFUSED, SERVFAIL);
// no response at all is ErrNoAnswer.
func (l *Lab) Dig(ns, server, name string, args ...string) (string, error) {
	full := append([]string{"dig", "+time=1", "+tries=1", "+noall", "+comments", "+answer", "@" + server, name}, args...)
	out, err := l.Exec(ns, full...)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 9 {
		return "", fmt.Errorf("lab: dig @%s %s: %w", server, name, ErrNoAnswer)
	}
	if err != nil {
		return "", fmt.Errorf("lab: %w: %s", err, out)
	}
	status := ""
	var answers []string
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "status: "); i >= 0 && strings.HasPrefix(line, ";; ->>HEADER<<-") {
			status = strings.TrimSuffix(strings.Fields(line[i+len("status: "):])[0], ",")
			continue
		}
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		// name ttl class type rdata...
		if f := strings.Fields(line); len(f) >= 5 {
			answers = append(answers, strings.Join(f[4:], " "))
		}
	}
	switch status {
	case "NOERROR":
		return strings.Join(answers, "\n"), nil
	case "":
		return "", fmt.Errorf("lab: dig @%s %s: no header in %q", server, name, out)
	default:
		return "", fmt.Errorf("lab: dig @%s %s: %s", server, name, status)
	}
}
