// Package netlab builds a small internet in network namespaces for
// wanpin's end-to-end tests and demo:
//
//	lan host ── router ── isp1 ── server
//	                  └── isp2 ──┘   (n ISPs)
//
// The router is where wanpin runs; the lab itself installs no NAT and no
// policy there. Each ISP drops every packet from its customer whose source
// is not the customer's address, as real ISPs do, so a wrong NAT shows up
// as loss (and in a counter). The server tells which ISP a connection came
// through by the source address it sees. Only documentation addresses are
// used, and nothing outside the lab's own namespaces is touched.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Addresses. Uplink i (1-based) uses 198.51.100.8(i-1)/29 (ISP .1, router
// .2) and 2001:db8:10i::/64; the server is reached over 203.0.113.x.
const (
	LANRouter4  = "192.0.2.1"
	LANHost4    = "192.0.2.10"
	LANHostAlt4 = "192.0.2.20" // second LAN address, for source policies
	LANRouter6  = "2001:db8:1::1"
	LANHost6    = "2001:db8:1::10"
	ServerAddr4 = "203.0.113.10"
	ServerAlt4  = "203.0.113.11" // second server address, for destination policies
	ServerAddr6 = "2001:db8:ff::10"
	ServerAlt6  = "2001:db8:ff::11"
)

// Ports of the server's services.
const (
	PortWhoami = 8080 // TCP: replies with the peer address (HTTP or raw)
	PortUDP    = 8081 // UDP: replies to each datagram with the peer address
	PortStream = 8082 // TCP: sends data until the client closes
	PortIperf  = 5201
)

// UplinkAddr4 is the router's address on uplink i.
func UplinkAddr4(i int) string { return fmt.Sprintf("198.51.100.%d", 8*(i-1)+2) }

// UplinkGateway4 is ISP i's address on the customer link.
func UplinkGateway4(i int) string { return fmt.Sprintf("198.51.100.%d", 8*(i-1)+1) }

// UplinkAddr6 is the router's IPv6 address on uplink i.
func UplinkAddr6(i int) string { return fmt.Sprintf("2001:db8:10%d::2", i) }

// UplinkGateway6 is ISP i's IPv6 router as the router's main table knows
// it: link-local, as router advertisements hand it out.
func UplinkGateway6(i int) string { return "fe80::1" }

// UplinkGlobal6 is ISP i's global IPv6 address on the customer link.
func UplinkGlobal6(i int) string { return fmt.Sprintf("2001:db8:10%d::1", i) }

// Delegated6 is the prefix ISP i routes to the router (as DHCPv6-PD
// would delegate it): nat6 none hands LAN hosts addresses from its first
// /64, nat6 prefix maps the LAN onto its second (NPT6).
func Delegated6(i int) string { return fmt.Sprintf("2001:db8:d%d::/56", i) }

// LANHostIn6 is the LAN host's address from ISP i's prefix (see
// AddLANPrefixes).
func LANHostIn6(i int) string { return fmt.Sprintf("2001:db8:d%d::10", i) }

// NPT6 is the /64 of ISP i's prefix that nat6 = "prefix" maps the LAN's
// 2001:db8:1::/64 onto; the LAN host shows up as NPTHost6(i).
func NPT6(i int) string { return fmt.Sprintf("2001:db8:d%d:1::/64", i) }

// NPTHost6 is the LAN host's address after prefix translation to ISP i.
func NPTHost6(i int) string { return fmt.Sprintf("2001:db8:d%d:1::10", i) }

// LANPrefix6 is the LAN's own IPv6 prefix.
const LANPrefix6 = "2001:db8:1::/64"

// Options shape a lab.
type Options struct {
	// ISPs is the number of ISPs, default 2: at most 8 with resolvers
	// or DHCP (their addresses follow the ISP links' in 203.0.113.0/24),
	// else at most 16.
	ISPs int

	// DHCP lists the uplinks (1-based) whose IPv4 a DHCP client on the
	// router configures: wan<i> gets no static IPv4 address and no IPv4
	// default route, and ISP i runs a DHCP server on its customer link
	// instead (see dhcp.go). IPv6 stays static. Implies Resolvers.
	DHCP []int
	// DHCPRenewal is the renewal time (T1) the ISPs' DHCP servers hand
	// out with the lease of LeaseTime, and 7/4 of it as rebinding time
	// (T2); 0 leaves dnsmasq's defaults, 1/2 and 7/8 of the lease.
	DHCPRenewal time.Duration
	// Resolvers makes every ISP run a DNS resolver that answers only its
	// own customer (see dns.go).
	Resolvers bool
}

// Lab is one built lab. Close tears it down.
type Lab struct {
	Prefix string
	Router string
	LAN    string
	Server string
	isps   []string

	server *server
	lock   *os.File // held while the lab lives (see Sweep)
	mu     sync.Mutex
	procs  []*Proc
	closed bool

	opts       Options
	dir        string         // temporary files of DHCP and DNS, made on first use
	cleanups   []func() error // run by Close, after the processes are gone
	dhcp       dhcpState      // see dhcp.go
	forwarders int            // DNS forwarders started (dns.go)
}

// ISP returns the namespace name of ISP i (1-based).
func (l *Lab) ISP(i int) string { return l.isps[i-1] }

// ISPs is the number of ISPs.
func (l *Lab) ISPs() int { return len(l.isps) }

// ISPOf maps a source address the server saw to the ISP it came through
// (0 if it is none of the uplinks' addresses or prefixes).
func (l *Lab) ISPOf(addr string) int {
	addr = strings.TrimSpace(addr)
	a, err := netip.ParseAddr(addr)
	for i := 1; i <= len(l.isps); i++ {
		if addr == l.CustomerAddr4(i) || addr == UplinkAddr6(i) {
			return i
		}
		if err == nil && netip.MustParsePrefix(Delegated6(i)).Contains(a) {
			return i
		}
	}
	return 0
}

// New builds a lab. On error, what was built is torn down again.
func New(opts Options) (*Lab, error) {
	if opts.ISPs == 0 {
		opts.ISPs = 2
	}
	max := 16
	if opts.Resolvers || len(opts.DHCP) > 0 {
		// ResolverAddr4 starts at 203.0.113.53: ISP 10's link would
		// take it.
		max = 8
	}
	if opts.ISPs < 1 || opts.ISPs > max {
		return nil, fmt.Errorf("lab: %d ISPs, want 1..%d", opts.ISPs, max)
	}
	if err := checkDHCPOptions(opts); err != nil {
		return nil, err
	}
	// The lock comes before any namespace: a lab whose namespaces exist
	// and whose lock is free is a dead one (Sweep).
	p, lock, err := newPrefix()
	if err != nil {
		return nil, err
	}
	l := &Lab{Prefix: p, Router: p + "-router", LAN: p + "-lan", Server: p + "-srv", opts: opts, lock: lock}
	for i := 1; i <= opts.ISPs; i++ {
		l.isps = append(l.isps, fmt.Sprintf("%s-isp%d", p, i))
	}
	if err := l.build(); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.buildResolvers(); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.buildDHCP(); err != nil {
		l.Close()
		return nil, err
	}
	srv, err := startServer(l)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("lab: starting the server's services: %w", err)
	}
	l.server = srv
	return l, nil
}

func (l *Lab) namespaces() []string {
	return append([]string{l.Router, l.LAN, l.Server}, l.isps...)
}

// build creates namespaces, links, addresses, routes and ISP filters with
// one `ip -batch` per namespace where it can: building a lab takes well
// under a second.
func (l *Lab) build() error {
	for _, ns := range l.namespaces() {
		if err := sh("ip", "netns", "add", ns); err != nil {
			return err
		}
		if err := l.ip(ns, "link set lo up"); err != nil {
			return err
		}
		// Before any link exists, so every link inherits them:
		// no DAD (addresses usable at once), IPv6 addresses kept while a
		// link is down (an ISP taking its side down must get them back),
		// and no reverse-path filter inherited from the host (wanpin sets
		// what it needs on the router).
		if err := l.sysctl(ns,
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.ipv6.conf.all.keep_addr_on_down=1", "net.ipv6.conf.default.keep_addr_on_down=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		); err != nil {
			return err
		}
	}
	// LAN.
	if err := sh("ip", "link", "add", "lan0", "netns", l.Router, "type", "veth", "peer", "eth0", "netns", l.LAN); err != nil {
		return err
	}
	if err := l.ip(l.Router,
		"link set lan0 up",
		"addr add 192.0.2.1/26 dev lan0",
		"addr add 2001:db8:1::1/64 dev lan0 nodad",
	); err != nil {
		return err
	}
	if err := l.ip(l.LAN,
		"link set eth0 up",
		"addr add 192.0.2.10/26 dev eth0",
		"addr add 192.0.2.20/26 dev eth0",
		"addr add 2001:db8:1::10/64 dev eth0 nodad",
		"route add default via 192.0.2.1",
		"route add ::/0 via 2001:db8:1::1",
	); err != nil {
		return err
	}
	for i, isp := range l.isps {
		n := i + 1
		wan := fmt.Sprintf("wan%d", n)
		if err := sh("ip", "link", "add", wan, "netns", l.Router, "type", "veth", "peer", "cust", "netns", isp); err != nil {
			return err
		}
		if err := sh("ip", "link", "add", "srv", "netns", isp, "type", "veth", "peer", fmt.Sprintf("isp%d", n), "netns", l.Server); err != nil {
			return err
		}
		// The router's main table gets what a DHCP client and router
		// advertisements would leave: a default route per uplink, with
		// a metric by preference. An uplink under DHCP gets its IPv4
		// from a real client instead (dhcp.go).
		v4 := []string{
			fmt.Sprintf("addr add %s/29 dev %s", UplinkAddr4(n), wan),
			fmt.Sprintf("route add default via %s dev %s metric %d", UplinkGateway4(n), wan, 100*n),
		}
		if l.dhcpOn(n) {
			v4 = nil
		}
		if err := l.ip(l.Router, append(append([]string{"link set " + wan + " up"}, v4...),
			fmt.Sprintf("addr add %s/64 dev %s nodad", UplinkAddr6(n), wan),
			// As router advertisements leave it: via the ISP's
			// link-local router address.
			fmt.Sprintf("route add ::/0 via %s dev %s metric %d", UplinkGateway6(n), wan, 100*n),
		)...); err != nil {
			return err
		}
		srv4, isp4 := fmt.Sprintf("203.0.113.%d", 4*i+18), fmt.Sprintf("203.0.113.%d", 4*i+17)
		srv6, isp6 := fmt.Sprintf("2001:db8:20%d::2", n), fmt.Sprintf("2001:db8:20%d::1", n)
		if err := l.ip(isp,
			"link set cust up",
			"link set srv up",
			fmt.Sprintf("addr add %s/29 dev cust", UplinkGateway4(n)),
		); err != nil {
			return err
		}
		if err := l.ip(isp, custIPv6(n)...); err != nil {
			return err
		}
		if err := l.ip(isp,
			fmt.Sprintf("addr add %s/30 dev srv", isp4),
			fmt.Sprintf("addr add %s/64 dev srv nodad", isp6),
			fmt.Sprintf("route add 203.0.113.10/31 via %s", srv4),
			fmt.Sprintf("route add 2001:db8:ff::/64 via %s", srv6),
		); err != nil {
			return err
		}
		if err := l.sysctl(isp, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
			return err
		}
		// Ingress filtering: only the customer's own addresses may
		// come from the customer link.
		filter := fmt.Sprintf(`table inet isp {
	counter spoofed { }
	counter spoofed6 { }
	chain in {
		type filter hook prerouting priority -300; policy accept;
		iifname "cust" ip saddr != %s counter name spoofed drop
		iifname "cust" ip6 saddr != { %s, %s, fe80::/10, :: } counter name spoofed6 drop
	}
}
`, UplinkAddr4(n), UplinkAddr6(n), Delegated6(n))
		if l.dhcpOn(n) || l.resolversOn() {
			// The same filter with a set the lease can move in, DHCP
			// let through and the resolver's customers-only rule.
			filter = l.ispFilter(n)
		}
		if err := l.nft(isp, filter); err != nil {
			return err
		}
		if err := l.ip(l.Server,
			fmt.Sprintf("link set isp%d up", n),
			fmt.Sprintf("addr add %s/30 dev isp%d", srv4, n),
			fmt.Sprintf("addr add %s/64 dev isp%d nodad", srv6, n),
			fmt.Sprintf("route add 198.51.100.%d/29 via %s", 8*i, isp4),
			fmt.Sprintf("route add 2001:db8:10%d::/64 via %s", n, isp6),
			fmt.Sprintf("route add %s via %s", Delegated6(n), isp6),
		); err != nil {
			return err
		}
	}
	if err := l.ip(l.Server,
		"addr add 203.0.113.10/32 dev lo",
		"addr add 203.0.113.11/32 dev lo",
		"addr add 2001:db8:ff::10/128 dev lo nodad",
		"addr add 2001:db8:ff::11/128 dev lo nodad",
	); err != nil {
		return err
	}
	// The router forwards; what it does with marks and NAT is wanpin's job.
	// accept_ra=2: a forwarding router still takes router advertisements
	// (and sends solicitations) on its uplinks, as a Debian router with an
	// RA-configured uplink does.
	if err := l.sysctl(l.Router, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	var ra []string
	for i := range l.isps {
		ra = append(ra, fmt.Sprintf("net.ipv6.conf.wan%d.accept_ra=2", i+1))
	}
	return l.sysctl(l.Router, ra...)
}

// AddLANPrefixes gives the router's LAN interface and the LAN host an
// address from every ISP's delegated prefix (the first /64), as router
// advertisements with several prefixes would: what nat6 = "none" needs.
func (l *Lab) AddLANPrefixes() error {
	var router, host []string
	for i := 1; i <= len(l.isps); i++ {
		router = append(router, fmt.Sprintf("addr add 2001:db8:d%d::1/64 dev lan0 nodad", i))
		host = append(host, fmt.Sprintf("addr add %s/64 dev eth0 nodad", LANHostIn6(i)))
	}
	if err := l.ip(l.Router, router...); err != nil {
		return err
	}
	return l.ip(l.LAN, host...)
}

// ip runs `ip -batch` with the given lines in ns.
func (l *Lab) ip(ns string, lines ...string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip -n %s: %v: %s (batch: %q)", ns, err, strings.TrimSpace(string(out)), lines)
	}
	return nil
}

func (l *Lab) nft(ns, ruleset string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: nft in %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (l *Lab) sysctl(ns string, settings ...string) error {
	args := append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)
	return sh("ip", args...)
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Exec runs a command in a namespace and returns its combined output.
// Like Start it enters only the network namespace: `ip netns exec` would
// remount /sys and hide the cgroup tree.
func (l *Lab) Exec(ns string, args ...string) (string, error) {
	full := append([]string{"--net=/run/netns/" + ns, "--"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w", ns, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Close stops the lab's processes and deletes its namespaces. It is safe
// to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := l.procs
	l.mu.Unlock()
	for _, p := range procs {
		p.Close()
	}
	if l.server != nil {
		l.server.close()
	}
	var errs []error
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		if err := l.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range l.namespaces() {
		if err := exec.Command("ip", "netns", "del", ns).Run(); err != nil {
			if _, statErr := exec.Command("ip", "netns", "pids", ns).Output(); statErr == nil {
				errs = append(errs, fmt.Errorf("lab: deleting %s: %w", ns, err))
			}
		}
	}
	if l.lock != nil {
		// Removed while still held: a Sweep that opened it meanwhile
		// finds, once it gets the lock, that the path is no longer
		// this file, and leaves the name alone.
		os.Remove(l.lock.Name())
		l.lock.Close()
	}
	return errors.Join(errs...)
}

// LockDir holds a lock file per live lab, <prefix>.lock, which the
// process that built the lab holds locked (flock) until Close: the
// kernel drops the lock when that process dies, however it dies.
var LockDir = "/run/wanpin-lab"

func lockPath(prefix string) string { return filepath.Join(LockDir, prefix+".lock") }

// newPrefix picks a lab prefix no other lab has and returns it with its
// lock file, created and locked.
func newPrefix() (string, *os.File, error) {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return "", nil, fmt.Errorf("lab: %w", err)
	}
	var last error
	for try := 0; try < 100; try++ {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		p := "wpl" + hex.EncodeToString(b)
		if _, err := os.Stat("/run/netns/" + p + "-router"); err == nil {
			continue // a lab of an older version, without lock file
		}
		path := lockPath(p)
		// O_EXCL: a lock file that exists, held or not, is another
		// lab's (or a dead one's that Sweep will take).
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			last = err
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil || !samePath(f, path) {
			// A Sweep took the fresh file for a dead lab's between
			// its creation and the flock (and may have removed it).
			f.Close()
			last = fmt.Errorf("lock of %s taken by a sweep", p)
			continue
		}
		fmt.Fprintf(f, "%d\n", os.Getpid())
		return p, f, nil
	}
	return "", nil, fmt.Errorf("lab: no free lab prefix: %v", last)
}

// samePath reports whether path still names the open file f.
func samePath(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// labState is what Sweep knows of a lab prefix.
type labState int

const (
	labLive     labState = iota // its lock is held
	labDead                     // its lock was free: now Sweep's
	labLockless                 // no lock file
)

// probeLab tries to take prefix's lock. On labDead the returned file
// holds the lock; the caller removes the lock file and closes it.
func probeLab(prefix string) (labState, *os.File) {
	path := lockPath(prefix)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return labLockless, nil
		}
		return labLive, nil // unreadable: leave it alone
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return labLive, nil
	}
	if !samePath(f, path) {
		// Closed (or swept) meanwhile; a new lab may have the name.
		f.Close()
		return labLive, nil
	}
	return labDead, f
}

// Sweep deletes namespaces left by labs of crashed runs: those whose lock
// file (in LockDir) no process holds. A live lab's lock is held by the
// process that built it, so Sweep never deletes a lab another run is
// using, even one whose server namespace has no process yet. Namespaces
// without a lock file are from labs built before the locks: for those
// the old rule stays, a lab whose server namespace has no process is a
// leftover.
func Sweep() {
	prefixes := map[string][]string{} // prefix -> its namespaces
	out, err := exec.Command("ip", "netns", "list").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || !strings.HasPrefix(f[0], "wpl") || !strings.Contains(f[0], "-") {
				continue
			}
			p := f[0][:strings.Index(f[0], "-")]
			prefixes[p] = append(prefixes[p], f[0])
		}
	}
	// Lock files of labs that died before making any namespace.
	if ents, err := os.ReadDir(LockDir); err == nil {
		for _, e := range ents {
			if p, ok := strings.CutSuffix(e.Name(), ".lock"); ok && strings.HasPrefix(p, "wpl") {
				if _, seen := prefixes[p]; !seen {
					prefixes[p] = nil
				}
			}
		}
	}
	for p, names := range prefixes {
		state, lock := probeLab(p)
		switch state {
		case labLive:
			continue
		case labLockless:
			pids, _ := exec.Command("ip", "netns", "pids", p+"-srv").Output()
			if len(strings.TrimSpace(string(pids))) != 0 {
				continue
			}
			if _, err := os.Stat(lockPath(p)); err == nil {
				continue // a lab took the name meanwhile
			}
		}
		// A booted router (boot.go) of a lab whose process died keeps
		// running in its namespace, and its root stays mounted.
		sweepBooted(p, names)
		for _, ns := range names {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
		if lock != nil {
			os.Remove(lock.Name())
			lock.Close()
		}
	}
	// After the namespaces: it removes the files of labs whose router
	// namespace is gone.
	sweepEtcNetns()
}

// custIPv6 is ISP i's IPv6 on the customer link: its global and
// link-local router addresses and the route of the customer's delegated
// prefix. Idempotent (replace), so SetCarrier can put it back.
func custIPv6(i int) []string {
	return []string{
		fmt.Sprintf("addr replace %s/64 dev cust nodad", UplinkGlobal6(i)),
		"addr replace fe80::1/64 dev cust nodad",
		fmt.Sprintf("route replace %s via %s dev cust", Delegated6(i), UplinkAddr6(i)),
	}
}

// SetCarrier takes ISP i's side of the customer link down or up: the
// router's wan<i> loses carrier but keeps its address, as when a modem
// loses sync.
func (l *Lab) SetCarrier(i int, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	lines := []string{"link set cust " + state}
	if up {
		// An interface taken down loses its IPv6 addresses and the
		// routes through it (the ISP's fe80::1 router address and its
		// route to the delegated prefix): put them back, as the ISP's
		// router would.
		lines = append(lines, custIPv6(i)...)
	}
	if err := l.ip(l.ISP(i), lines...); err != nil {
		return err
	}
	// The kernel's linkwatch worker applies carrier changes, possibly up
	// to a second later: return once the router sees the new state.
	deadline := time.Now().Add(3 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", l.Router, "-o", "link", "show", "dev", fmt.Sprintf("wan%d", i)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("lab: reading wan%d: %v: %s", i, err, out)
		}
		if strings.Contains(string(out), " state UP ") == up {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: carrier of ISP %d %s: router still shows %s", i, state, out)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Blackhole makes ISP i silently drop everything it would forward or
// answer, while every link stays up.
func (l *Lab) Blackhole(i int, on bool) error { return l.blackhole(i, "inet", "blackhole", on) }

// Blackhole6 makes ISP i silently drop every IPv6 packet while IPv4 and
// the link stay up: an ISP whose IPv6 breaks on its own.
func (l *Lab) Blackhole6(i int, on bool) error { return l.blackhole(i, "ip6", "blackhole6", on) }

// blackhole adds or deletes, in ISP i, a table that drops every packet of
// its family before anything else sees it.
func (l *Lab) blackhole(i int, family, name string, on bool) error {
	if on {
		return l.nft(l.ISP(i), fmt.Sprintf(`table %s %s {
	chain pre { type filter hook prerouting priority -400; policy drop; }
}
`, family, name))
	}
	return sh("ip", "netns", "exec", l.ISP(i), "nft", "delete", "table", family, name)
}

// SpoofedDrops reads how many IPv4 packets ISP i dropped for a foreign
// source. IPv6 ones are counted apart (SpoofedDrops6), so a failure says
// which family's NAT was wrong.
func (l *Lab) SpoofedDrops(i int) (uint64, error) { return l.spoofed(i, "spoofed") }

// SpoofedDrops6 reads how many IPv6 packets ISP i dropped for a foreign source.
func (l *Lab) SpoofedDrops6(i int) (uint64, error) { return l.spoofed(i, "spoofed6") }

func (l *Lab) spoofed(i int, counter string) (uint64, error) {
	out, err := l.Exec(l.ISP(i), "nft", "list", "counter", "inet", "isp", counter)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	var n uint64
	if i := strings.Index(out, "packets "); i >= 0 {
		fmt.Sscan(out[i+len("packets "):], &n)
	}
	return n, nil
}

// StartRA runs radvd on ISP i's customer link: router advertisements
// naming the ISP's link-local address as default router, as a real ISP
// sends them. It is stopped with the lab.
func (l *Lab) StartRA(i int, dir string) (*Proc, error) {
	conf := fmt.Sprintf(`interface cust {
	AdvSendAdvert on;
	MinRtrAdvInterval 3;
	MaxRtrAdvInterval 10;
	AdvDefaultLifetime 1800;
	prefix %s/64 { AdvOnLink on; AdvAutonomous off; };
};
`, strings.TrimSuffix(UplinkGlobal6(i), "1"))
	path := fmt.Sprintf("%s/radvd-isp%d.conf", dir, i)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return l.Start(l.ISP(i), fmt.Sprintf("%s/radvd-isp%d.log", dir, i),
		"radvd", "--nodaemon", "--config", path, "--pidfile", fmt.Sprintf("%s/radvd-isp%d.pid", dir, i), "--logmethod", "stderr")
}
