package netlab

// Uplinks configured by real DHCP clients.
//
// With Options.DHCP, ISP i runs dnsmasq as DHCP server on its customer
// link, leasing exactly the one address its customer may use (the
// routers option names UplinkGateway4(i), the DNS option ResolverAddr4(i)),
// and the router's wan<i> starts without IPv4: a client the test starts
// with StartDHCPClient configures it, as on a Debian router.
//
// The clients run with `ip netns exec <router>`, as one would by hand:
// that command gives them a mount namespace of their own in which every
// entry of /etc/netns/<router>/ is bind-mounted over the same name in
// /etc. The lab creates that directory (and Close removes it) with
//
//	dhcp/            over /etc/dhcp: Debian's dhclient.conf without the
//	                 host name, the package's own hooks (debug,
//	                 rfc3442-classless-routes) and the test's exit hooks
//	default/         over /etc/default: a copy of the host's files and
//	                 `wanpin`, the key=value lines of SetDefaults
//	resolv.conf      over /etc/resolv.conf: what the clients write
//
// A bind of a directory hides the host's whole /etc/<dir>, so what the
// clients' scripts read there is copied in; the host's own dhclient exit
// hooks (timesyncd restarts the host's timesyncd) are deliberately not.
//
// dhcpcd keeps its pid files and control sockets under /run/dhcpcd, its
// leases under /var/lib/dhcpcd and runs the hooks of
// /usr/lib/dhcpcd/dhcpcd-hooks: none of them can be changed on its command
// line, and none is under /etc. So the lab starts it through a shell that,
// inside the mount namespace `ip netns exec` made (a slave of the host's:
// nothing propagates back), bind-mounts lab directories over /run, over
// /var/lib/dhcpcd and over the hooks directory, then runs dhcpcd (and
// stays, to take it along if the test process dies). Debian's
// /usr/lib/dhcpcd/dhcpcd-run-hooks runs unchanged and finds there Debian's
// 01-test and 20-resolv.conf (the others set the host name or restart the
// host's NTP services) and the test's hooks. The config (-f) is the lab's:
// Debian's options for one interface (allowinterfaces, ipv4only), with
// nodev (udev never sees a namespace's links), noipv4ll, noarp (the
// ARP probe costs 5 s per lease) and nodelay (so does the random wait
// before the first message, up to 2 s). As on Debian with one dhcpcd per
// interface, the clients share /run/dhcpcd (their pid files and sockets
// are per interface; the resolv.conf hook merges what each wrote in
// hook-state) and /var/lib/dhcpcd (one DUID, a lease file per interface):
// the lab's dhcpcd-run and dhcpcd-db.
//
// The servers broadcast their replies (--dhcp-broadcast): an offer unicast
// to an address the router does not have yet is forwarded by the router
// out of its default route, and the ISP there counts it as spoofed.
//
// When a lease moves, dhclient hears the server's NAK at its next renewal
// (T1); dhcpcd only when it rebinds (T2): while renewing it listens on
// the leased address, and NAKs are broadcast. Options.DHCPRenewal sets
// both (T2 = 7/4 T1, dnsmasq's proportion); MoveLease does not wait.
//
// Known deviation: Debian's dhclient-script writes resolv.conf through a
// temporary file next to it, /etc/resolv.conf.dhclient-new.<pid>: that
// file is the host's /etc for a moment (the script then copies it over
// the bind with cat and removes it), exactly as with any `ip netns exec`
// dhclient.

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LeaseTime is the lease the ISPs' DHCP servers hand out: dnsmasq's
// minimum. Clients renew at half of it unless Options.DHCPRenewal says
// otherwise.
const LeaseTime = 2 * time.Minute

// ClientKind names a DHCP client the lab can run on the router.
type ClientKind string

const (
	// Dhclient is ISC dhclient (isc-dhcp-client) with Debian's
	// /sbin/dhclient-script.
	Dhclient ClientKind = "dhclient"
	// Dhcpcd is dhcpcd (dhcpcd-base) with Debian's dhcpcd-run-hooks.
	Dhcpcd ClientKind = "dhcpcd"
)

// etcNetns is where `ip netns exec` looks for a namespace's /etc files.
const etcNetns = "/etc/netns"

// dhcpState is the lab's DHCP bookkeeping.
type dhcpState struct {
	mu         sync.Mutex
	customer4  map[int]string    // address ISP i lets its customer use, when moved
	options4   map[int][2]string // router and DNS server ISP i hands out, when changed
	servers    map[int]*Proc     // ISP i's DHCP server
	clients    map[int]*DHCPClient
	etc        string // /etc/netns/<router>, once made
	madeNetns  bool   // /etc/netns did not exist before
	hooksDhcpc string // the dhcpcd hooks directory of the lab
}

func checkDHCPOptions(o Options) error {
	seen := map[int]bool{}
	for _, i := range o.DHCP {
		if i < 1 || i > o.ISPs {
			return fmt.Errorf("lab: DHCP on uplink %d of %d", i, o.ISPs)
		}
		if seen[i] {
			return fmt.Errorf("lab: DHCP on uplink %d twice", i)
		}
		seen[i] = true
	}
	if o.DHCPRenewal < 0 || o.DHCPRenewal != o.DHCPRenewal.Truncate(time.Second) || o.DHCPRenewal >= LeaseTime*7/8 {
		return fmt.Errorf("lab: DHCP renewal %v: want whole seconds below %v", o.DHCPRenewal, LeaseTime*7/8)
	}
	return nil
}

func (l *Lab) dhcpOn(i int) bool {
	for _, n := range l.opts.DHCP {
		if n == i {
			return true
		}
	}
	return false
}

// CustomerAddr4 is the IPv4 address ISP i lets its customer use (and,
// under DHCP, leases): UplinkAddr4(i) until MoveLease or SetLeaseAddr
// moves it.
func (l *Lab) CustomerAddr4(i int) string {
	l.dhcp.mu.Lock()
	defer l.dhcp.mu.Unlock()
	if a, ok := l.dhcp.customer4[i]; ok {
		return a
	}
	return UplinkAddr4(i)
}

// ispFilter is ISP i's ingress filter when it leases by DHCP or runs a
// resolver: the static one of build, with the customer's IPv4 address in
// a set a lease move can change, DHCP to the ISP's own server let through
// from any source (0.0.0.0 while the client has no address, the old
// address while it renews a moved lease: the ISP must hear it to say no),
// and the resolver's rule: queries from anyone but the customer dropped.
func (l *Lab) ispFilter(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `table inet isp {
	counter spoofed { }
	counter spoofed6 { }
	counter dns_foreign { }
	set cust4 { type ipv4_addr; elements = { %s } }
	chain in {
		type filter hook prerouting priority -300; policy accept;
`, l.CustomerAddr4(i))
	if l.dhcpOn(i) {
		fmt.Fprintf(&b, "\t\tiifname \"cust\" ip daddr { 255.255.255.255, %s } udp sport 68 udp dport 67 accept\n", UplinkGateway4(i))
		// The kernel loops the server's own broadcast replies back in
		// through cust: not the customer's.
		fmt.Fprintf(&b, "\t\tiifname \"cust\" ip saddr %s ip daddr 255.255.255.255 udp sport 67 udp dport 68 accept\n", UplinkGateway4(i))
	}
	fmt.Fprintf(&b, `		iifname "cust" ip saddr != @cust4 counter name spoofed drop
		iifname "cust" ip6 saddr != { %s, %s, fe80::/10, :: } counter name spoofed6 drop
	}
`, UplinkAddr6(i), Delegated6(i))
	if l.resolversOn() {
		fmt.Fprintf(&b, `	chain local {
		type filter hook input priority 0; policy accept;
		ip daddr %s meta l4proto { tcp, udp } th dport 53 ip saddr != @cust4 counter name dns_foreign drop
		ip6 daddr %s meta l4proto { tcp, udp } th dport 53 ip6 saddr != { %s, %s } counter name dns_foreign drop
	}
`, ResolverAddr4(i), ResolverAddr6(i), UplinkAddr6(i), Delegated6(i))
	}
	b.WriteString("}\n")
	return b.String()
}

// workDir is the lab's directory of temporary files, made on first use
// and removed by Close.
func (l *Lab) workDir() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dir != "" {
		return l.dir, nil
	}
	d, err := os.MkdirTemp("", l.Prefix+"-")
	if err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	// dhcpcd's manager runs as user dhcpcd and rereads its config on
	// SIGHUP: let it read its way in.
	if err := os.Chmod(d, 0o755); err != nil {
		os.RemoveAll(d)
		return "", fmt.Errorf("lab: %w", err)
	}
	l.dir = d
	l.cleanups = append(l.cleanups, func() error { return os.RemoveAll(d) })
	return d, nil
}

// Dir is the lab's directory of temporary files (logs, leases, pid
// files of the DHCP and DNS processes), removed by Close.
func (l *Lab) Dir() (string, error) { return l.workDir() }

// buildDHCP prepares the router's /etc/netns directory and starts the
// DHCP servers of the uplinks under DHCP.
func (l *Lab) buildDHCP() error {
	if len(l.opts.DHCP) == 0 {
		return nil
	}
	l.dhcp.mu.Lock()
	l.dhcp.servers = map[int]*Proc{}
	l.dhcp.clients = map[int]*DHCPClient{}
	if l.dhcp.customer4 == nil {
		l.dhcp.customer4 = map[int]string{}
	}
	l.dhcp.mu.Unlock()
	if err := l.makeRouterEtc(); err != nil {
		return err
	}
	for _, i := range l.opts.DHCP {
		if err := l.startDHCPServer(i); err != nil {
			return err
		}
	}
	return nil
}

// startDHCPServer (re)starts ISP i's dnsmasq with a range of the one
// address its customer may use and a fresh lease file: authoritative, so
// a client asking for any other address is refused (NAK) at once.
func (l *Lab) startDHCPServer(i int) error {
	dir, err := l.workDir()
	if err != nil {
		return err
	}
	l.dhcp.mu.Lock()
	old := l.dhcp.servers[i]
	l.dhcp.mu.Unlock()
	if old != nil {
		old.Signal(syscall.SIGTERM)
		if old.Wait(3*time.Second) != nil && !old.Exited() {
			old.Close()
		}
	}
	leases := filepath.Join(dir, fmt.Sprintf("isp%d-dhcp.leases", i))
	if err := os.WriteFile(leases, nil, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	addr := l.CustomerAddr4(i)
	router, dns := UplinkGateway4(i), ResolverAddr4(i)
	l.dhcp.mu.Lock()
	if o, ok := l.dhcp.options4[i]; ok {
		router, dns = o[0], o[1]
	}
	l.dhcp.mu.Unlock()
	args := []string{"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		// root: dropping to nobody would clear the parent-death
		// signal, and a crashed test would leave it running.
		"--user=root", "--group=root",
		"--port=0", "--no-resolv", "--no-hosts",
		"--interface=cust", "--bind-interfaces",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.248,%ds", addr, addr, int(LeaseTime.Seconds())),
		// Replies broadcast: an offer unicast to an address the router
		// does not have yet would be forwarded by it, out of its default
		// route, and counted as spoofed by the ISP there.
		"--dhcp-authoritative", "--dhcp-broadcast", "--no-ping", "--dhcp-ignore-names",
		"--dhcp-option=option:router," + router,
		"--dhcp-option=option:dns-server," + dns,
		"--dhcp-leasefile=" + leases,
		"--pid-file=" + filepath.Join(dir, fmt.Sprintf("isp%d-dhcp.pid", i)),
		"--log-dhcp", "--log-facility=-",
	}
	if r := l.opts.DHCPRenewal; r > 0 {
		// Rebinding (T2) in dnsmasq's proportion to it, 7/4, not at its
		// default of 7/8 of the lease: dhcpcd does not hear the
		// broadcast NAK while renewing (it listens on the leased
		// address then), only when it rebinds.
		t1 := int(r.Seconds())
		t2 := min(max(t1*7/4, t1+1), int((LeaseTime * 7 / 8).Seconds()))
		args = append(args, fmt.Sprintf("--dhcp-option=option:T1,%d", t1), fmt.Sprintf("--dhcp-option=option:T2,%d", t2))
	}
	p, err := l.Start(l.ISP(i), filepath.Join(dir, fmt.Sprintf("isp%d-dhcp.log", i)), args...)
	if err != nil {
		return err
	}
	// Return once it listens on the DHCP port, so a client started now
	// is answered at its first DISCOVER.
	if err := l.waitListen(l.ISP(i), "-Hlun", "sport = :67", ":67", p); err != nil {
		return fmt.Errorf("lab: DHCP server of ISP %d: %w", i, err)
	}
	l.dhcp.mu.Lock()
	l.dhcp.servers[i] = p
	l.dhcp.mu.Unlock()
	return nil
}

// waitListen waits until `ss <flags> <filter>` in ns shows want, or p ends.
func (l *Lab) waitListen(ns, flags, filter, want string, p *Proc) error {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		out, _ := l.Exec(ns, "ss", flags, filter)
		if strings.Contains(out, want) {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("exited: %v", p.Wait(0))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after 5s", want)
		}
	}
}

// SetLeaseAddr moves ISP i's side of the lease to addr, an address of
// uplink i's /29 (say UplinkAddr4(i) with the last byte plus one): its
// DHCP server now offers only addr and refuses the old address, and its
// ingress filter lets addr through and drops the old one. The router's
// client learns of it only when it next talks to the server: at its
// renewal (Options.DHCPRenewal), or at once with MoveLease.
func (l *Lab) SetLeaseAddr(i int, addr string) error {
	if !l.dhcpOn(i) {
		return fmt.Errorf("lab: uplink %d is not under DHCP", i)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return fmt.Errorf("lab: lease address %q: not IPv4", addr)
	}
	subnet := netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/29", 8*(i-1)))
	first, last := subnet.Addr().Next(), netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", 8*(i-1)+6))
	if !subnet.Contains(a) || a.Less(first) || last.Less(a) || addr == UplinkGateway4(i) {
		return fmt.Errorf("lab: lease address %s: not a host of uplink %d's %s other than the ISP's %s", addr, i, subnet, UplinkGateway4(i))
	}
	l.dhcp.mu.Lock()
	l.dhcp.customer4[i] = addr
	l.dhcp.mu.Unlock()
	if err := l.nft(l.ISP(i), fmt.Sprintf("flush set inet isp cust4\nadd element inet isp cust4 { %s }\n", addr)); err != nil {
		return err
	}
	return l.startDHCPServer(i)
}

// SetLeaseOptions makes ISP i's DHCP server hand out router and dns (a
// comma-separated list) from now on; the router's client learns of them
// at its next renewal. The caller gives the ISP's namespace the router
// address if traffic is to flow through it.
func (l *Lab) SetLeaseOptions(i int, router, dns string) error {
	if !l.dhcpOn(i) {
		return fmt.Errorf("lab: uplink %d is not under DHCP", i)
	}
	l.dhcp.mu.Lock()
	if l.dhcp.options4 == nil {
		l.dhcp.options4 = map[int][2]string{}
	}
	l.dhcp.options4[i] = [2]string{router, dns}
	l.dhcp.mu.Unlock()
	return l.startDHCPServer(i)
}

// MoveLease is SetLeaseAddr and then makes the router's client on wan<i>
// (if one runs) talk to the server at once with Renew: dhclient is
// restarted (it asks for its old address, is refused, discovers the new
// one), dhcpcd rebinds (SIGHUP, the signal `dhcpcd -n` sends, with the
// same refusal). It returns once the router has addr on wan<i>, within
// timeout.
func (l *Lab) MoveLease(i int, addr string, timeout time.Duration) error {
	if err := l.SetLeaseAddr(i, addr); err != nil {
		return err
	}
	l.dhcp.mu.Lock()
	c := l.dhcp.clients[i]
	l.dhcp.mu.Unlock()
	if c != nil && c.Running() {
		if err := c.Renew(); err != nil {
			return err
		}
	}
	return l.waitAddr4(i, addr, timeout)
}

// UplinkAddrs4 lists the IPv4 addresses (without prefix length) the
// router has on wan<i>.
func (l *Lab) UplinkAddrs4(i int) ([]string, error) {
	out, err := exec.Command("ip", "-n", l.Router, "-4", "-o", "addr", "show", "dev", fmt.Sprintf("wan%d", i)).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("lab: reading wan%d: %v: %s", i, err, out)
	}
	var addrs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for k := 0; k+1 < len(f); k++ {
			if f[k] == "inet" {
				addrs = append(addrs, strings.SplitN(f[k+1], "/", 2)[0])
			}
		}
	}
	return addrs, nil
}

func (l *Lab) waitAddr4(i int, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		addrs, err := l.UplinkAddrs4(i)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a == addr {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: wan%d has %v after %v, not %s", i, addrs, timeout, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// makeRouterEtc creates /etc/netns/<router>/ (see the top of this file)
// and checks that `ip netns exec` binds all of it over the host's /etc.
func (l *Lab) makeRouterEtc() error {
	for _, need := range []string{"/etc/resolv.conf", "/etc/default"} {
		if _, err := os.Stat(need); err != nil {
			return fmt.Errorf("lab: %s must exist for `ip netns exec` to bind the lab's over it: %w", need, err)
		}
	}
	if _, err := os.Stat(etcNetns); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(etcNetns, 0o755); err == nil {
			l.dhcp.madeNetns = true
		}
	}
	etc := filepath.Join(etcNetns, l.Router)
	var err error
	// Another lab may remove an empty /etc/netns as this one makes its
	// directory: try again.
	for try := 0; try < 3; try++ {
		if err = os.MkdirAll(etc, 0o755); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	madeNetns := l.dhcp.madeNetns
	l.cleanups = append(l.cleanups, func() error {
		err := os.RemoveAll(etc)
		if madeNetns {
			os.Remove(etcNetns) // only if empty: other labs may use it
		}
		return err
	})
	l.dhcp.etc = etc
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), nil, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	// default/: the host's files, then wanpin.
	def := filepath.Join(etc, "default")
	if err := os.Mkdir(def, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	ents, _ := os.ReadDir("/etc/default")
	for _, e := range ents {
		if e.Type().IsRegular() {
			copyFile(filepath.Join("/etc/default", e.Name()), filepath.Join(def, e.Name()), 0o644)
		}
	}
	if err := l.SetDefaults(nil); err != nil {
		return err
	}
	// dhcp/: only where the host has /etc/dhcp to bind over.
	if st, err := os.Stat("/etc/dhcp"); err == nil && st.IsDir() {
		dhcp := filepath.Join(etc, "dhcp")
		for _, d := range []string{"dhclient-enter-hooks.d", "dhclient-exit-hooks.d"} {
			if err := os.MkdirAll(filepath.Join(dhcp, d), 0o755); err != nil {
				return fmt.Errorf("lab: %w", err)
			}
		}
		if err := os.WriteFile(filepath.Join(dhcp, "dhclient.conf"), []byte(dhclientConf), 0o644); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		// isc-dhcp-client's own hooks, as the package installs them.
		if copyFile("/etc/dhcp/debug", filepath.Join(dhcp, "debug"), 0o644) == nil {
			os.Symlink("../debug", filepath.Join(dhcp, "dhclient-enter-hooks.d", "debug"))
			os.Symlink("../debug", filepath.Join(dhcp, "dhclient-exit-hooks.d", "debug"))
		}
		copyFile("/etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes",
			filepath.Join(dhcp, "dhclient-exit-hooks.d", "rfc3442-classless-routes"), 0o644)
	}
	// The dhcpcd hooks directory, bound over /usr/lib/dhcpcd/dhcpcd-hooks.
	dir, err := l.workDir()
	if err != nil {
		return err
	}
	hooks := filepath.Join(dir, "dhcpcd-hooks")
	if err := os.Mkdir(hooks, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, h := range []string{"01-test", "20-resolv.conf"} {
		copyFile(filepath.Join(dhcpcdHooksDir, h), filepath.Join(hooks, h), 0o644)
	}
	l.dhcp.hooksDhcpc = hooks
	// `ip netns exec` says on stderr which bind failed, and goes on:
	// a client must never run with the host's /etc in its place.
	out, err := exec.Command("ip", "netns", "exec", l.Router, "true").CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		return fmt.Errorf("lab: ip netns exec %s: %v: %s", l.Router, err, out)
	}
	return nil
}

// dhclientConf is Debian's /etc/dhcp/dhclient.conf without the host name
// (`send host-name = gethostname()` and the host-name request): the lab's
// clients must neither tell the machine's name nor take one back, as
// dhclient-script would set it as the (shared) host name.
const dhclientConf = `# The lab's dhclient.conf: Debian's, less the host name.
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;

request subnet-mask, broadcast-address, time-offset, routers,
	domain-name, domain-name-servers, domain-search,
	dhcp6.name-servers, dhcp6.domain-search, dhcp6.fqdn, dhcp6.sntp-servers,
	netbios-name-servers, netbios-scope, interface-mtu,
	rfc3442-classless-static-routes, ntp-servers;
`

const dhcpcdHooksDir = "/usr/lib/dhcpcd/dhcpcd-hooks"

// RouterEtc is the directory whose entries the router's DHCP clients see
// over /etc: /etc/netns/<router> ("" without Options.DHCP).
func (l *Lab) RouterEtc() string { return l.dhcp.etc }

// runPartsName is what run-parts (and so dhclient-script) accepts as the
// name of a hook: any other file in the directory is silently skipped.
var runPartsName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// InstallHooks copies hook files, under their base names, to where the
// client kind runs them on the router: dhclient's exit hooks directory
// (/etc/dhcp/dhclient-exit-hooks.d inside: names must be run-parts names,
// no dots) or dhcpcd's hooks directory (beside Debian's 01-test and
// 20-resolv.conf, in name order). Both clients source their hooks with
// the lease in shell variables (reason, interface, new_ip_address,
// new_routers, ...). Hooks installed while a client runs are used from
// its next event on.
func (l *Lab) InstallHooks(kind ClientKind, files ...string) error {
	if l.dhcp.etc == "" {
		return errors.New("lab: hooks need Options.DHCP")
	}
	var dir string
	switch kind {
	case Dhclient:
		dir = filepath.Join(l.dhcp.etc, "dhcp", "dhclient-exit-hooks.d")
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("lab: no /etc/dhcp on this host (isc-dhcp-client): %w", err)
		}
	case Dhcpcd:
		dir = l.dhcp.hooksDhcpc
	default:
		return fmt.Errorf("lab: unknown DHCP client %q", kind)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if kind == Dhclient && !runPartsName.MatchString(name) {
			return fmt.Errorf("lab: hook %s: run-parts would skip it (letters, digits, _ and - only)", name)
		}
		if err := copyFile(f, filepath.Join(dir, name), 0o755); err != nil {
			return err
		}
	}
	return nil
}

var defaultsKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:,@%+=-]*$`)

// SetDefaults writes the router's /etc/default/wanpin (as the DHCP
// clients' hooks see it) with one key=value line per entry, sorted by
// key; values that the shell would not take as they are are single-quoted.
func (l *Lab) SetDefaults(kv map[string]string) error {
	if l.dhcp.etc == "" {
		return errors.New("lab: /etc/default/wanpin needs Options.DHCP")
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		if !defaultsKey.MatchString(k) {
			return fmt.Errorf("lab: /etc/default/wanpin: key %q is not a shell variable name", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by the lab for the router's DHCP hooks.\n")
	for _, k := range keys {
		v := kv[k]
		if !shellSafe.MatchString(v) {
			v = "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
		}
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	if err := os.WriteFile(filepath.Join(l.dhcp.etc, "default", "wanpin"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("lab: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return os.Chmod(dst, mode)
}

// sweepEtcNetns removes the /etc/netns directories and temporary
// directories of labs whose router namespace is gone (crashed runs).
func sweepEtcNetns() {
	gone := func(prefix string) bool {
		_, err := os.Stat("/run/netns/" + prefix + "-router")
		return errors.Is(err, os.ErrNotExist)
	}
	labName := regexp.MustCompile(`^(wpl[0-9a-f]{4})-`)
	if ents, err := os.ReadDir(etcNetns); err == nil {
		for _, e := range ents {
			if m := labName.FindStringSubmatch(e.Name()); m != nil && e.Name() == m[1]+"-router" && gone(m[1]) {
				os.RemoveAll(filepath.Join(etcNetns, e.Name()))
			}
		}
	}
	if ents, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range ents {
			if m := labName.FindStringSubmatch(e.Name()); m != nil && e.IsDir() && gone(m[1]) {
				os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
}

// DHCPClient is a DHCP client on one of the router's uplinks.
type DHCPClient struct {
	Kind   ClientKind
	Uplink int

	l     *Lab
	dir   string // its own files
	iface string
	mu    sync.Mutex
	proc  *Proc
}

// StartDHCPClient starts a client of the given kind on wan<i>, which
// must be under DHCP, in the foreground under the lab (killed by Close).
// It returns at once; WaitLease waits for the address. With dhclient the
// second uplink's default route is missing, as on Debian without
// ifmetric: dhclient-script adds `default via <router>` without a metric,
// which the first lease's route already is ("File exists", silenced by
// the script). dhcpcd gives each uplink a default route with its own
// metric (1000 + interface index).
func (l *Lab) StartDHCPClient(i int, kind ClientKind) (*DHCPClient, error) {
	if !l.dhcpOn(i) {
		return nil, fmt.Errorf("lab: uplink %d is not under DHCP", i)
	}
	l.dhcp.mu.Lock()
	if c := l.dhcp.clients[i]; c != nil && c.Running() {
		l.dhcp.mu.Unlock()
		return nil, fmt.Errorf("lab: a %s already runs on wan%d", c.Kind, i)
	}
	l.dhcp.mu.Unlock()
	dir, err := l.workDir()
	if err != nil {
		return nil, err
	}
	c := &DHCPClient{Kind: kind, Uplink: i, l: l, iface: fmt.Sprintf("wan%d", i),
		dir: filepath.Join(dir, fmt.Sprintf("%s-wan%d", kind, i))}
	switch kind {
	case Dhclient:
		if _, err := os.Stat(filepath.Join(l.dhcp.etc, "dhcp")); err != nil {
			return nil, fmt.Errorf("lab: dhclient needs the host's /etc/dhcp (isc-dhcp-client): %w", err)
		}
		if err := os.MkdirAll(c.dir, 0o755); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	case Dhcpcd:
		for _, d := range []string{"/var/lib/dhcpcd", dhcpcdHooksDir} {
			if _, err := os.Stat(d); err != nil {
				return nil, fmt.Errorf("lab: dhcpcd needs %s (dhcpcd-base): %w", d, err)
			}
		}
		for _, d := range []string{c.dir, filepath.Join(dir, "dhcpcd-run"), filepath.Join(dir, "dhcpcd-db")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, fmt.Errorf("lab: %w", err)
			}
		}
		conf := strings.ReplaceAll(dhcpcdConf, "IFACE", c.iface)
		if err := os.WriteFile(filepath.Join(c.dir, "dhcpcd.conf"), []byte(conf), 0o644); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	default:
		return nil, fmt.Errorf("lab: unknown DHCP client %q", kind)
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	l.dhcp.mu.Lock()
	l.dhcp.clients[i] = c
	l.dhcp.mu.Unlock()
	return c, nil
}

// dhcpcdConf is Debian's /etc/dhcpcd.conf for one uplink (IFACE) of the
// lab: only that interface and only IPv4; nodev (udev never sees the
// links of a namespace), noipv4ll (no 169.254 address while the ISP is
// silent), noarp (the RFC 5227 probe costs 5 s per lease), nodelay (no
// random wait of up to 2 s before the first DISCOVER); no host name is
// requested.
const dhcpcdConf = `# The lab's dhcpcd.conf: Debian's, for IFACE only.
allowinterfaces IFACE
ipv4only
nodev
noipv4ll
noarp
nodelay
duid
persistent
vendorclassid
option domain_name_servers, domain_name, domain_search
option classless_static_routes
option interface_mtu
option rapid_commit
require dhcp_server_identifier
`

// Start starts the client (again, after Stop or Release) with the same
// lease and configuration files. It returns at once.
func (c *DHCPClient) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil && !c.proc.Exited() {
		return fmt.Errorf("lab: %s on %s already runs", c.Kind, c.iface)
	}
	var args []string
	switch c.Kind {
	case Dhclient:
		args = append(c.netnsExec(), sbin("dhclient"), "-4", "-d", "-v",
			"-cf", "/etc/dhcp/dhclient.conf", "-lf", c.leaseFile(), "-pf", c.pidFile(), c.iface)
	case Dhcpcd:
		// See the top of the file: binds inside the mount namespace
		// of `ip netns exec`, then dhcpcd in the foreground, waiting
		// for a lease as long as it takes (-t 0: with one interface
		// it would exit after 30 s). dhcpcd becomes user dhcpcd, which
		// clears the parent-death signal the lab gives its processes:
		// the shell stays as its parent, with a death signal of its
		// own (setpriv), and kills the group when the test dies.
		args = append(c.netnsExec(), "setpriv", "--pdeathsig", "TERM", "--", "sh", "-c",
			`set -e
mount -n --bind "$1" /run
mount -n --bind "$2" /var/lib/dhcpcd
mount -n --bind "$3" `+dhcpcdHooksDir+`
shift 3
trap 'kill -KILL 0' TERM
"$@" &
wait $!`,
			"sh", c.runDir(), c.dbDir(), c.l.dhcp.hooksDhcpc,
			sbin("dhcpcd"), "-B", "-4", "-t", "0", "-f", filepath.Join(c.dir, "dhcpcd.conf"), c.iface)
	}
	p, err := c.l.Start(c.l.Router, c.LogPath(), args...)
	if err != nil {
		return err
	}
	c.proc = p
	return nil
}

func (c *DHCPClient) netnsExec() []string { return []string{"ip", "netns", "exec", c.l.Router} }

// runDir and dbDir are what dhcpcd sees as /run and /var/lib/dhcpcd.
func (c *DHCPClient) runDir() string { return filepath.Join(filepath.Dir(c.dir), "dhcpcd-run") }
func (c *DHCPClient) dbDir() string  { return filepath.Join(filepath.Dir(c.dir), "dhcpcd-db") }

func (c *DHCPClient) leaseFile() string {
	if c.Kind == Dhcpcd {
		return filepath.Join(c.dbDir(), c.iface+".lease")
	}
	return filepath.Join(c.dir, "dhclient.leases")
}

func (c *DHCPClient) pidFile() string {
	if c.Kind == Dhcpcd {
		return filepath.Join(c.runDir(), "dhcpcd", c.iface+"-4.pid")
	}
	return filepath.Join(c.dir, "dhclient.pid")
}

// LeaseFile is where the client keeps its lease (dhcpcd's is binary).
func (c *DHCPClient) LeaseFile() string { return c.leaseFile() }

// LogPath is the file the client's output goes to.
func (c *DHCPClient) LogPath() string { return filepath.Join(c.dir, "log") }

// Log returns what the client has written so far.
func (c *DHCPClient) Log() string {
	b, _ := os.ReadFile(c.LogPath())
	return string(b)
}

// Running reports whether the client process runs.
func (c *DHCPClient) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil && !c.proc.Exited()
}

// Pid is the client's process id: dhclient's, or dhcpcd's manager
// process (0 if it does not run, or dhcpcd has not written its pid file).
func (c *DHCPClient) Pid() int {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil || p.Exited() {
		return 0
	}
	if c.Kind != Dhcpcd {
		return p.Pid()
	}
	// The pid file, if it names a process of this client's group (a
	// file left by an earlier run names none).
	b, err := os.ReadFile(c.pidFile())
	if err != nil {
		return 0
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
		return 0
	}
	if pg, err := syscall.Getpgid(pid); err != nil || pg != p.Pid() {
		return 0
	}
	return pid
}

// signal sends sig to the client process (dhcpcd's manager, not the
// shell above it).
func (c *DHCPClient) signal(sig syscall.Signal) error {
	pid := c.Pid()
	if c.Kind == Dhcpcd {
		// Just started: the pid file comes a moment later.
		for deadline := time.Now().Add(2 * time.Second); pid == 0 && c.Running() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			pid = c.Pid()
		}
	}
	if pid == 0 {
		return fmt.Errorf("lab: %s on %s does not run", c.Kind, c.iface)
	}
	return syscall.Kill(pid, sig)
}

// WaitLease waits up to timeout until wan<i> has the address ISP i leases
// (CustomerAddr4) and returns it.
func (c *DHCPClient) WaitLease(timeout time.Duration) (string, error) {
	want := c.l.CustomerAddr4(c.Uplink)
	if err := c.l.waitAddr4(c.Uplink, want, timeout); err != nil {
		return "", fmt.Errorf("%w\n%s log:\n%s", err, c.Kind, c.Log())
	}
	return want, nil
}

// Stop stops the client without releasing its lease (SIGTERM, what
// `dhclient -x` and `dhcpcd -x` send): the address and routes stay, as
// after `systemctl stop` of a persistent client, until the lease runs out.
func (c *DHCPClient) Stop() error { return c.signalStop(syscall.SIGTERM) }

// Release gives the lease back and stops the client: `dhclient -r`
// (DHCPRELEASE, dhclient-script with RELEASE, which flushes the address)
// or SIGALRM to dhcpcd (what `dhcpcd -k` sends: it releases, deconfigures
// the interface and exits).
func (c *DHCPClient) Release() error {
	if c.Kind == Dhcpcd {
		return c.signalStop(syscall.SIGALRM)
	}
	if !c.Running() {
		return fmt.Errorf("lab: %s on %s does not run", c.Kind, c.iface)
	}
	// dhclient -r finds the running one by its pid file, stops it and
	// releases in its stead.
	args := []string{"netns", "exec", c.l.Router, sbin("dhclient"), "-4", "-r", "-v",
		"-cf", "/etc/dhcp/dhclient.conf", "-lf", c.leaseFile(), "-pf", c.pidFile(), c.iface}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: dhclient -r on %s: %v: %s", c.iface, err, out)
	}
	return c.waitExit()
}

// Renew makes the client talk to the server now. dhclient has no such
// command (no OMAPI here): it is stopped and started again, and so asks
// for its recorded lease (INIT-REBOOT, hooks see PREINIT, then REBOOT, or
// EXPIRE and BOUND when the server refuses). dhcpcd gets SIGHUP (what
// `dhcpcd -n` sends): it rebinds, and starts over on a refusal.
func (c *DHCPClient) Renew() error {
	if c.Kind == Dhcpcd {
		return c.signal(syscall.SIGHUP)
	}
	if err := c.Stop(); err != nil {
		return err
	}
	return c.Start()
}

func (c *DHCPClient) signalStop(sig syscall.Signal) error {
	if c.Kind != Dhcpcd {
		if err := c.signal(sig); err != nil {
			return err
		}
		return c.waitExit()
	}
	// dhcpcd in the middle of (re)binding may lose a signal (seen: a
	// SIGALRM or SIGTERM after which it never logs "received ..."):
	// send it again until the client exits.
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := c.signal(sig); err != nil && !p.Exited() {
			return err
		}
		if p.Wait(500*time.Millisecond) == nil || p.Exited() {
			return nil
		}
		if time.Now().After(deadline) {
			p.Close()
			return fmt.Errorf("lab: %s on %s did not stop on %v", c.Kind, c.iface, sig)
		}
	}
}

func (c *DHCPClient) waitExit() error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if err := p.Wait(5 * time.Second); err != nil && !p.Exited() {
		p.Close()
		return fmt.Errorf("lab: %s on %s did not stop: %w", c.Kind, c.iface, err)
	}
	return nil
}

// sbin finds a system command: on PATH, else in /usr/sbin or /sbin (not
// on a plain user's PATH).
func sbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return filepath.Join(d, name)
		}
	}
	return name
}
