package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// The domain lab's names, served by a DNS server in the lab's internet
// (dnsmasq on domainDNS in the server namespace):
//
//	d<i>.stream.example   A 203.0.113.(127+i), i = 1..100   (asked directly)
//	f<i>.stream.example   AAAA 2001:db8:ff::1:<i>           (asked through the router's forwarder)
//	www.stream.example    CNAME cdn.elsewhere.example, A 203.0.113.231
//	tv.elsewhere.example  CNAME edge.stream.example, A 203.0.113.230
//	ttl.stream.example    A 203.0.113.232, TTL 5 s
//	plain.other.example   A 203.0.113.233 (no policy's)
//	r<i>.stream.example   A 203.0.113.(233+i), i = 1..10    (the router's own, through its forwarder)
//
// Every address is the server's (203.0.113.128/25 and 2001:db8:ff::1:0/112
// are local there; the ISPs route the /25 to it), so each fresh name is a
// fresh address: steering its first connection needs the answer learned.
const (
	domainDNS   = netlab.ServerAlt4
	domainNames = 100
)

func domainConfig(extra string) string {
	return `domain_ttl_floor = "1s"

[[uplink]]
name = "isp1"
interface = "wan1"
` + extra + `
# DNS probes: sockets bound to the uplink's device, whose answers must
# never be held (a re-injected answer would come back through lo).
[uplink.health]
method = "dns"
targets = ["` + netlab.ResolverAddr4(1) + `"]

[[uplink]]
name = "isp2"
interface = "wan2"
tier = 2

[[policy]]
name = "stream"
domains = ["stream.example"]
uplinks = ["isp2"]
`
}

// domainLab gives the server the addresses and the DNS server the names.
func domainLab(t *testing.T, l *netlab.Lab) {
	t.Helper()
	run(t, l, l.Server, "ip", "addr", "add", "203.0.113.128/25", "dev", "lo")
	run(t, l, l.Server, "ip", "-6", "route", "add", "local", "2001:db8:ff::1:0/112", "dev", "lo")
	for i := 1; i <= l.ISPs(); i++ {
		// The server's end of ISP i's link (netlab's build).
		run(t, l, l.ISP(i), "ip", "route", "add", "203.0.113.128/25", "via", fmt.Sprintf("203.0.113.%d", 4*(i-1)+18))
	}
	var conf strings.Builder
	for i := 1; i <= domainNames; i++ {
		fmt.Fprintf(&conf, "host-record=d%d.stream.example,203.0.113.%d\n", i, 127+i)
		fmt.Fprintf(&conf, "host-record=f%d.stream.example,2001:db8:ff::1:%x\n", i, i)
	}
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&conf, "host-record=r%d.stream.example,203.0.113.%d\n", i, 233+i)
	}
	conf.WriteString(`host-record=edge.stream.example,203.0.113.230
host-record=cdn.elsewhere.example,203.0.113.231
cname=tv.elsewhere.example,edge.stream.example
cname=www.stream.example,cdn.elsewhere.example
host-record=ttl.stream.example,203.0.113.232,5
host-record=plain.other.example,203.0.113.233
`)
	dir := t.TempDir()
	path := filepath.Join(dir, "names.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Start(l.Server, filepath.Join(dir, "dns.log"), "dnsmasq", "--keep-in-foreground", "--conf-file="+path,
		"--user=root", "--group=root", "--no-resolv", "--no-hosts", "--no-poll", "--port=53",
		"--listen-address="+domainDNS, "--bind-interfaces", "--local-ttl=300", "--log-facility=-"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the lab's DNS server", func() (bool, string) {
		out, err := l.Dig(l.Server, domainDNS, "plain.other.example")
		return err == nil && strings.TrimSpace(out) == "203.0.113.233", fmt.Sprint(out, err)
	})
}

// firstConnections resolves each name through server (A or AAAA) and
// opens one connection to the first address, all in one shell on the LAN
// host; it returns, per ISP, how many the server saw arrive through it.
func firstConnections(t *testing.T, l *netlab.Lab, server, qtype string, names []string) map[int]int {
	t.Helper()
	return firstConnectionsFrom(t, l, l.LAN, server, qtype, names)
}

// firstConnectionsFrom is firstConnections from namespace ns.
func firstConnectionsFrom(t *testing.T, l *netlab.Lab, ns, server, qtype string, names []string) map[int]int {
	t.Helper()
	script := fmt.Sprintf(`for n in %s; do
  a=$(dig +time=2 +tries=1 +short @%s "$n" %s | grep -v '\.$' | head -1)
  case "$a" in *:*) u="http://[$a]:%d/";; *) u="http://$a:%d/";; esac
  echo "$n $a $(curl -sS --connect-timeout 3 -m 5 "$u" 2>&1)"
done`, strings.Join(names, " "), server, qtype, netlab.PortWhoami, netlab.PortWhoami)
	out, err := l.Exec(ns, "bash", "-c", script)
	if err != nil {
		t.Fatalf("first connections: %v\n%s", err, out)
	}
	counts := map[int]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Errorf("no answer or no connection: %q", line)
			continue
		}
		counts[l.ISPOf(f[2])]++
	}
	return counts
}

func connectISP(t *testing.T, l *netlab.Lab, addr string) int {
	t.Helper()
	counts, err := l.CurlManyFrom(l.LAN, addr, 1)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	for isp := range counts {
		return isp
	}
	return 0
}

// TestDomains: a LAN host that asks the lab's DNS server directly, and
// one that asks the router's own forwarder, each open first connections
// to 100 fresh names of the policy's domain, each a fresh address: the
// address is in the policy's set before the first packet, so (nearly)
// all take the policy's uplink, never the default's. CNAME chains are
// followed both ways; a record's TTL ends its steering (with the
// floor); the learned addresses survive an apply; explain and status
// show them; and a daemon killed outright stops holding answers within
// the hold rules' timeout (fail open).
func TestDomains(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 2, Resolvers: true})
	domainLab(t, l)
	d := startWanpin(t, l, domainConfig(""))
	d.waitFor("domain policies: learning from DNS answers", 1, 5*time.Second)
	if _, err := l.StartForwarder([]string{domainDNS}, "--cache-size=0"); err != nil {
		t.Fatal(err)
	}
	// Not a policy's: the default balancing, tier 1.
	if isp := connectISP(t, l, "203.0.113.233"); isp != 1 {
		t.Fatalf("an address of no policy's domain went through ISP %d, want 1", isp)
	}

	var direct, forwarded []string
	for i := 1; i <= domainNames; i++ {
		direct = append(direct, fmt.Sprintf("d%d.stream.example", i))
		forwarded = append(forwarded, fmt.Sprintf("f%d.stream.example", i))
	}
	c := firstConnections(t, l, domainDNS, "A", direct)
	t.Logf("asking the lab's DNS server directly (IPv4): first connections by ISP %v", c)
	if c[2] < 99 {
		t.Errorf("%d of %d first connections took the policy's uplink (ISP 2), want at least 99: %v", c[2], domainNames, c)
	}
	c = firstConnections(t, l, netlab.LANRouter4, "AAAA", forwarded)
	t.Logf("asking the router's forwarder (IPv6): first connections by ISP %v", c)
	if c[2] < 99 {
		t.Errorf("%d of %d first connections through the forwarder took ISP 2, want at least 99: %v", c[2], domainNames, c)
	}

	// The router's own programs asking its forwarder (the answer held on
	// its way out of the forwarder, through lo): the policy's rules for
	// the router's own traffic steer their first connections.
	var own []string
	for i := 1; i <= 10; i++ {
		own = append(own, fmt.Sprintf("r%d.stream.example", i))
	}
	c = firstConnectionsFrom(t, l, l.Router, netlab.LANRouter4, "A", own)
	t.Logf("the router's own, through its forwarder: first connections by ISP %v", c)
	if c[2] != 10 {
		t.Errorf("%d of 10 of the router's own first connections took ISP 2: %v", c[2], c)
	}

	// CNAME chains: a policy's name pointing elsewhere, and another name
	// pointing into the policy's domain.
	for _, n := range []struct{ name, addr string }{{"www.stream.example", "203.0.113.231"}, {"tv.elsewhere.example", "203.0.113.230"}} {
		c := firstConnections(t, l, domainDNS, "A", []string{n.name})
		if c[2] != 1 {
			t.Errorf("%s (CNAME, %s): by ISP %v, want ISP 2", n.name, n.addr, c)
		}
	}

	// explain and status.
	out, _ := d.cli(0, "explain", "--src", netlab.LANHost4, "--dst", "203.0.113.230", "--proto", "tcp", "--dport", "8080")
	if !strings.Contains(out, "stream") || !strings.Contains(out, "learned from the DNS answer for tv.elsewhere.example") {
		t.Errorf("explain of a learned address:\n%s", out)
	}
	s := statusOf(t, d)
	if s.Domains == nil || !s.Domains.Learning || s.Domains.Added < 2*domainNames || s.Domains.ReinjectErrors != 0 {
		t.Errorf("status: %+v", s.Domains)
	}
	t.Logf("learner: %+v", *s.Domains)

	// An apply replaces the table: the learned addresses stay.
	d.writeConfig(domainConfig("weight = 2\n"))
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	d.waitFor("nftables applied", 2, 5*time.Second)
	if isp := connectISP(t, l, "203.0.113.128"); isp != 2 {
		t.Errorf("d1's address after an apply went through ISP %d, want 2", isp)
	}

	// TTL 5 s, floor 1 s: steered at first, then no longer.
	start := time.Now()
	if c := firstConnections(t, l, domainDNS, "A", []string{"ttl.stream.example"}); c[2] != 1 {
		t.Errorf("ttl.stream.example: by ISP %v, want ISP 2", c)
	}
	took := waitUntil(t, 10*time.Second, "the 5 s record to stop steering (TTL 5 s, floor 1 s)", func() (bool, string) {
		isp := connectISP(t, l, "203.0.113.232")
		return isp == 1, fmt.Sprintf("ISP %d", isp)
	})
	if since := time.Since(start); since < 4*time.Second {
		t.Errorf("a record of TTL 5 s stopped steering after %s", since)
	}
	t.Logf("a record of TTL 5 s stopped steering %s after the answer (waited %s)", time.Since(start).Round(10*time.Millisecond), took)

	// The DNS probes kept isp1 up all along.
	if s := statusOf(t, d); s.Uplinks[0].State != "up" || s.Uplinks[0].Transitions != 0 {
		t.Errorf("isp1, probed by DNS: %s after %d transitions (%s)", s.Uplinks[0].State, s.Uplinks[0].Transitions, s.Uplinks[0].Reason)
	}

	// Killed outright: the hold rules stay in the kernel, but dns_alive
	// expires and answers pass again (unlearned).
	d.stop(syscall.SIGKILL)
	took = waitUntil(t, 20*time.Second, "DNS answers to pass after the daemon died", func() (bool, string) {
		out, err := l.Dig(l.LAN, domainDNS, "plain.other.example")
		return err == nil && strings.TrimSpace(out) == "203.0.113.233", fmt.Sprint(out, err)
	})
	t.Logf("after SIGKILL, DNS answers passed again within %s", took)
}
