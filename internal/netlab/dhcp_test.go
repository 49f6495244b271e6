package netlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newDHCPLab builds a lab with opts, closed (and checked clean) when the
// test ends; on failure the logs of its DHCP and DNS processes are shown.
func newDHCPLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, c := range []string{"dnsmasq", "dhclient", "dhcpcd", "dig"} {
		if sbin(c) == c {
			t.Fatalf("%s is missing: run scripts/deps.sh", c)
		}
	}
	start := time.Now()
	l, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab built in %v", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, l)
		}
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func dumpLogs(t *testing.T, l *Lab) {
	if l.dir == "" {
		return
	}
	filepath.Walk(l.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && strings.HasSuffix(path, "log") {
			b, _ := os.ReadFile(path)
			t.Logf("%s:\n%s", strings.TrimPrefix(path, l.dir+"/"), b)
		}
		return nil
	})
}

// recordHook writes a hook that records, per interface and reason, the
// environment the client gave it and a value from /etc/default/wanpin:
// the same shell code serves both clients, which source their hooks.
func recordHook(t *testing.T, name string) (hook, out string) {
	t.Helper()
	dir := t.TempDir()
	out = filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	hook = filepath.Join(dir, name)
	code := `# The lab's test hook: sourced, so it must not exit.
. /etc/default/wanpin
{ env | sort; echo "FROM_DEFAULTS=$LAB_MARK"; } > "$LAB_OUT/$interface.$reason.tmp"
mv "$LAB_OUT/$interface.$reason.tmp" "$LAB_OUT/$interface.$reason"
`
	if err := os.WriteFile(hook, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	return hook, out
}

// hookEnv reads what the record hook wrote for iface and reason.
func hookEnv(out, iface, reason string) map[string]string {
	b, err := os.ReadFile(filepath.Join(out, iface+"."+reason))
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

func waitHook(t *testing.T, out, iface, reason string, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if env := hookEnv(out, iface, reason); env != nil {
			return env
		}
		if time.Now().After(deadline) {
			ents, _ := os.ReadDir(out)
			var seen []string
			for _, e := range ents {
				seen = append(seen, e.Name())
			}
			t.Fatalf("no %s hook for %s within %v (seen: %v)", reason, iface, timeout, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostState is what the lab's clients must leave alone on the host.
type hostState struct{ files map[string][]byte }

func readHostState(t *testing.T) hostState {
	t.Helper()
	s := hostState{files: map[string][]byte{}}
	for _, f := range []string{"/etc/resolv.conf", "/etc/dhcp/dhclient.conf", "/etc/default"} {
		if st, err := os.Stat(f); err == nil && st.IsDir() {
			ents, _ := os.ReadDir(f)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			s.files[f] = []byte(strings.Join(names, "\n"))
			continue
		}
		b, _ := os.ReadFile(f)
		s.files[f] = b
	}
	for _, d := range []string{"/etc/dhcp/dhclient-exit-hooks.d", "/var/lib/dhcpcd", "/var/lib/dhcp", "/run/dhcpcd", "/etc"} {
		ents, _ := os.ReadDir(d)
		var names []string
		for _, e := range ents {
			if d == "/etc" && !strings.HasPrefix(e.Name(), "resolv.conf") && !strings.HasPrefix(e.Name(), "dhcpcd") {
				continue
			}
			names = append(names, e.Name())
		}
		s.files[d+"/"] = []byte(strings.Join(names, "\n"))
	}
	return s
}

func (s hostState) check(t *testing.T) {
	t.Helper()
	now := readHostState(t)
	for k, v := range s.files {
		if !bytes.Equal(now.files[k], v) {
			t.Errorf("host's %s changed: %q, was %q", k, now.files[k], v)
		}
	}
}

// waitCarrier waits until the router's iface has (or lacks) carrier.
func waitCarrier(t *testing.T, l *Lab, iface string, on bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := l.Exec(l.Router, "ip", "link", "show", iface)
		if strings.Contains(out, "NO-CARRIER") != on {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: carrier never %v: %s", iface, on, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func defaultRoutes4(t *testing.T, l *Lab) string {
	t.Helper()
	out, err := l.Exec(l.Router, "ip", "-4", "route", "show", "default")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return out
}

// routerCurl fetches the server's whoami from the router's own address
// src, routed out of wan<i> by a rule, and returns what the server saw.
func routerCurl(l *Lab, i int, src string) (string, error) {
	out, err := l.Exec(l.Router, "sh", "-c", fmt.Sprintf(
		"ip rule add from %[1]s lookup %[2]d 2>/dev/null; ip route replace default via %[3]s dev wan%[4]d table %[2]d && curl -sS -m 2 --interface %[1]s http://%[5]s:%[6]d/",
		src, 100+i, UplinkGateway4(i), i, ServerAddr4, PortWhoami))
	return strings.TrimSpace(out), err
}

// TestDhclientLeases: both uplinks get their leases from the ISPs'
// dnsmasq with Debian's dhclient; the default routes are as Debian leaves
// them (the second one is refused: "File exists"); the exit hook runs with
// the lease variables and /etc/default/wanpin; resolv.conf is the lab's;
// the host's files are untouched; the leased address passes the ISP.
func TestDhclientLeases(t *testing.T) {
	host := readHostState(t)
	l := newDHCPLab(t, Options{DHCP: []int{1, 2}})
	hook, out := recordHook(t, "lab-record")
	if err := l.InstallHooks(Dhclient, hook); err != nil {
		t.Fatal(err)
	}
	if err := l.SetDefaults(map[string]string{"LAB_OUT": out, "LAB_MARK": "from /etc/default"}); err != nil {
		t.Fatal(err)
	}
	if got := defaultRoutes4(t, l); got != "" {
		t.Fatalf("default routes before any lease: %q", got)
	}
	if addrs, _ := l.UplinkAddrs4(1); len(addrs) != 0 {
		t.Fatalf("wan1 has %v before any lease", addrs)
	}
	for i := 1; i <= 2; i++ {
		start := time.Now()
		c, err := l.StartDHCPClient(i, Dhclient)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := c.WaitLease(15 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wan%d leased %s in %v", i, addr, time.Since(start).Round(time.Millisecond))
		if addr != UplinkAddr4(i) {
			t.Errorf("wan%d leased %s, want %s", i, addr, UplinkAddr4(i))
		}
		env := waitHook(t, out, fmt.Sprintf("wan%d", i), "BOUND", 5*time.Second)
		for k, want := range map[string]string{
			"interface": fmt.Sprintf("wan%d", i), "new_ip_address": UplinkAddr4(i),
			"new_routers": UplinkGateway4(i), "new_domain_name_servers": ResolverAddr4(i),
			"new_subnet_mask": "255.255.255.248", "new_dhcp_lease_time": "120",
			"FROM_DEFAULTS": "from /etc/default",
		} {
			if env[k] != want {
				t.Errorf("wan%d BOUND hook: %s=%q, want %q", i, k, env[k], want)
			}
		}
		if _, ok := env["new_host_name"]; ok {
			t.Errorf("wan%d: the lease carries a host name: %q", i, env["new_host_name"])
		}
	}
	// Debian without ifmetric: one default route, the first lease's.
	routes := defaultRoutes4(t, l)
	if want := fmt.Sprintf("default via %s dev wan1 \n", UplinkGateway4(1)); routes != want {
		t.Errorf("default routes:\n%s\nwant only %q", routes, want)
	}
	// The second client's script ran; its route was refused.
	if strings.Contains(routes, "wan2") {
		t.Errorf("wan2 got a default route: %s", routes)
	}
	if out, err := l.Exec(l.Router, "ip", "route", "add", "default", "via", UplinkGateway4(2), "dev", "wan2"); err == nil || !strings.Contains(out, "File exists") {
		t.Errorf("adding wan2's default route as dhclient-script does: %v %s", err, out)
	}
	resolv, _ := os.ReadFile(filepath.Join(l.RouterEtc(), "resolv.conf"))
	if !strings.Contains(string(resolv), "nameserver "+ResolverAddr4(2)) {
		t.Errorf("the router's resolv.conf: %q", resolv)
	}
	for i := 1; i <= 2; i++ {
		got, err := routerCurl(l, i, UplinkAddr4(i))
		if err != nil || l.ISPOf(got) != i {
			t.Errorf("router from its lease %s: %v %q", UplinkAddr4(i), err, got)
		}
	}
	if n, _ := l.SpoofedDrops(1); n != 0 {
		t.Errorf("ISP 1 dropped %d packets of the DHCP exchange or the lease", n)
	}
	host.check(t)
}

// TestDhcpcdLeases: the same with dhcpcd, which gives each uplink its own
// default route metric; its hooks run with the lease; it writes nothing
// of the host's.
func TestDhcpcdLeases(t *testing.T) {
	host := readHostState(t)
	l := newDHCPLab(t, Options{DHCP: []int{1, 2}})
	hook, out := recordHook(t, "90-lab-record")
	if err := l.InstallHooks(Dhcpcd, hook); err != nil {
		t.Fatal(err)
	}
	if err := l.SetDefaults(map[string]string{"LAB_OUT": out, "LAB_MARK": "it's quoted"}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		start := time.Now()
		c, err := l.StartDHCPClient(i, Dhcpcd)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := c.WaitLease(15 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wan%d leased %s in %v", i, addr, time.Since(start).Round(time.Millisecond))
		env := waitHook(t, out, fmt.Sprintf("wan%d", i), "BOUND", 5*time.Second)
		for k, want := range map[string]string{
			"interface": fmt.Sprintf("wan%d", i), "new_ip_address": UplinkAddr4(i),
			"new_routers": UplinkGateway4(i), "new_domain_name_servers": ResolverAddr4(i),
			"FROM_DEFAULTS": "it's quoted",
		} {
			if env[k] != want {
				t.Errorf("wan%d BOUND hook: %s=%q, want %q", i, k, env[k], want)
			}
		}
		if _, err := os.Stat(c.LeaseFile()); err != nil {
			t.Errorf("dhcpcd's lease is not in the lab: %v", err)
		}
	}
	routes := defaultRoutes4(t, l)
	for i := 1; i <= 2; i++ {
		if !strings.Contains(routes, fmt.Sprintf("default via %s dev wan%d proto dhcp src %s metric 10", UplinkGateway4(i), i, UplinkAddr4(i))) {
			t.Errorf("no dhcpcd default route of wan%d in:\n%s", i, routes)
		}
	}
	// Only its interface, only IPv4: the LAN and IPv6 are as built.
	if out, _ := l.Exec(l.Router, "ip", "-6", "route", "show", "default"); strings.Count(out, "default") != 2 || strings.Contains(out, "dhcp") {
		t.Errorf("IPv6 default routes: %s", out)
	}
	if out, _ := l.Exec(l.Router, "ip", "-4", "addr", "show", "dev", "lan0"); strings.Contains(out, "dynamic") {
		t.Errorf("dhcpcd touched lan0: %s", out)
	}
	resolv, _ := os.ReadFile(filepath.Join(l.RouterEtc(), "resolv.conf"))
	if !strings.Contains(string(resolv), "nameserver "+ResolverAddr4(1)) || !strings.Contains(string(resolv), "nameserver "+ResolverAddr4(2)) {
		t.Errorf("the router's resolv.conf: %q", resolv)
	}
	for i := 1; i <= 2; i++ {
		got, err := routerCurl(l, i, UplinkAddr4(i))
		if err != nil || l.ISPOf(got) != i {
			t.Errorf("router from its lease %s: %v %q", UplinkAddr4(i), err, got)
		}
	}
	host.check(t)
}

// TestLeaseMove: the ISP moves the lease to the next address; the client,
// made to renew, ends up with only the new address, which passes the ISP,
// while the old source is dropped as spoofed.
func TestLeaseMove(t *testing.T) {
	for _, kind := range []ClientKind{Dhclient, Dhcpcd} {
		t.Run(string(kind), func(t *testing.T) {
			l := newDHCPLab(t, Options{ISPs: 1, DHCP: []int{1}})
			hook, out := recordHook(t, "90-lab-record")
			if err := l.InstallHooks(kind, hook); err != nil {
				t.Fatal(err)
			}
			l.SetDefaults(map[string]string{"LAB_OUT": out})
			c, err := l.StartDHCPClient(1, kind)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			old, moved := UplinkAddr4(1), "198.51.100.3"
			// Forget the first lease's hook runs, once they are done:
			// the address is set before the hooks run.
			waitHook(t, out, "wan1", "BOUND", 5*time.Second)
			os.RemoveAll(out)
			os.Mkdir(out, 0o755)
			start := time.Now()
			if err := l.MoveLease(1, moved, 15*time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: moved to %s in %v", kind, moved, time.Since(start).Round(time.Millisecond))
			if l.CustomerAddr4(1) != moved || l.ISPOf(moved) != 1 || l.ISPOf(old) != 0 {
				t.Errorf("customer address %s, ISPOf(new) %d, ISPOf(old) %d", l.CustomerAddr4(1), l.ISPOf(moved), l.ISPOf(old))
			}
			// The old address goes (dhclient: EXPIRE, dhcpcd: NAK).
			deadline := time.Now().Add(5 * time.Second)
			for {
				addrs, _ := l.UplinkAddrs4(1)
				if len(addrs) == 1 && addrs[0] == moved {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("wan1 has %v, want only %s", addrs, moved)
				}
				time.Sleep(20 * time.Millisecond)
			}
			env := waitHook(t, out, "wan1", "BOUND", 5*time.Second)
			if env["new_ip_address"] != moved {
				t.Errorf("BOUND hook after the move: new_ip_address=%q", env["new_ip_address"])
			}
			if got, err := routerCurl(l, 1, moved); err != nil || got != moved {
				t.Errorf("router from the new lease: %v %q", err, got)
			}
			// The old address, put back by hand, is spoofed now.
			if out, err := l.Exec(l.Router, "ip", "addr", "add", old+"/32", "dev", "wan1"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			before, _ := l.SpoofedDrops(1)
			if got, err := routerCurl(l, 1, old); err == nil {
				t.Errorf("the old address %s still passes: server saw %q", old, got)
			}
			if after, _ := l.SpoofedDrops(1); after <= before {
				t.Errorf("ISP 1 dropped nothing from the old address (%d -> %d)", before, after)
			}
		})
	}
}

// TestLeaseMoveAtRenewal: with a short renewal time and no trigger, the
// client learns of the move at its next renewal: the ISP hears its
// request from the old address and refuses it.
func TestLeaseMoveAtRenewal(t *testing.T) {
	for _, kind := range []ClientKind{Dhclient, Dhcpcd} {
		t.Run(string(kind), func(t *testing.T) {
			l := newDHCPLab(t, Options{ISPs: 1, DHCP: []int{1}, DHCPRenewal: 3 * time.Second})
			c, err := l.StartDHCPClient(1, kind)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := l.SetLeaseAddr(1, "198.51.100.6"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: noticed the move at its renewal after %v", kind, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestLeaseFlapAndRestart: after the ISP's side of the link goes down and
// up the lease is there again (dhcpcd drops and re-acquires it, dhclient
// keeps it throughout); a stopped client leaves the address, a released
// one removes it, and either started again gets the lease back.
func TestLeaseFlapAndRestart(t *testing.T) {
	for _, kind := range []ClientKind{Dhclient, Dhcpcd} {
		t.Run(string(kind), func(t *testing.T) {
			l := newDHCPLab(t, Options{ISPs: 1, DHCP: []int{1}})
			c, err := l.StartDHCPClient(1, kind)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := l.SetCarrier(1, false); err != nil {
				t.Fatal(err)
			}
			waitCarrier(t, l, "wan1", false)
			if kind == Dhcpcd {
				// dhcpcd deconfigures the interface when the carrier goes
				// (dhclient does not notice): wait for that, or the checks
				// below would see the old lease still in place.
				deadline := time.Now().Add(5 * time.Second)
				for addrs, _ := l.UplinkAddrs4(1); len(addrs) > 0; addrs, _ = l.UplinkAddrs4(1) {
					if time.Now().After(deadline) {
						t.Fatalf("dhcpcd kept %v without carrier", addrs)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			during, _ := l.UplinkAddrs4(1)
			t.Logf("%s: wan1 without carrier has %v", kind, during)
			if err := l.SetCarrier(1, true); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: lease back %v after the carrier", kind, time.Since(start).Round(time.Millisecond))
			// The default route comes back with it.
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(defaultRoutes4(t, l), "default via "+UplinkGateway4(1)+" dev wan1") {
				if time.Now().After(deadline) {
					t.Fatalf("no default route after the flap: %q", defaultRoutes4(t, l))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got, err := routerCurl(l, 1, UplinkAddr4(1)); err != nil || l.ISPOf(got) != 1 {
				t.Errorf("after the flap: %v %q", err, got)
			}

			if err := c.Stop(); err != nil {
				t.Fatal(err)
			}
			if c.Running() {
				t.Fatal("still running after Stop")
			}
			if addrs, _ := l.UplinkAddrs4(1); len(addrs) != 1 {
				t.Errorf("after Stop wan1 has %v, want the lease kept", addrs)
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			// Released once the client's pid file names it: `dhclient -r`
			// finds the client to stop through it, and dhcpcd is signalled
			// through it.
			deadline = time.Now().Add(5 * time.Second)
			for {
				b, _ := os.ReadFile(c.pidFile())
				if pid := c.Pid(); pid != 0 && strings.TrimSpace(string(b)) == fmt.Sprint(pid) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: pid file %s holds %q, the client is %d", kind, c.pidFile(), b, c.Pid())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
			if addrs, _ := l.UplinkAddrs4(1); len(addrs) != 0 {
				t.Errorf("after Release wan1 has %v", addrs)
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitLease(15 * time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDHCPLabCleansUp: Close, with both kinds of client running, leaves
// no process, namespace, /etc/netns directory or temporary file.
func TestDHCPLabCleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, statErr := os.Stat(etcNetns)
	hadNetns := statErr == nil
	l, err := New(Options{DHCP: []int{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c1, err := l.StartDHCPClient(1, Dhclient)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.StartDHCPClient(2, Dhcpcd)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*DHCPClient{c1, c2} {
		if _, err := c.WaitLease(15 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var pids []string
	for _, ns := range l.namespaces() {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		pids = append(pids, strings.Fields(string(out))...)
	}
	dir, etc := l.dir, l.RouterEtc()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, etc} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	if _, err := os.Stat(etcNetns); err == nil && !hadNetns {
		ents, _ := os.ReadDir(etcNetns)
		if len(ents) == 0 {
			t.Errorf("%s made and left", etcNetns)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), l.Prefix) {
		t.Errorf("namespaces left: %s", out)
	}
	// Close waits for each process it started; what those started
	// (dhcpcd's helpers) dies with them, a moment later. A zombie is
	// dead: this machine's init may be slow to reap it.
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range pids {
		for {
			st, err := os.ReadFile("/proc/" + pid + "/stat")
			if err != nil || strings.Contains(string(st), ") Z ") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("process %s of the lab still running: %s", pid, st)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
