package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// auditLeaseLab is two uplinks whose second has no default route in the
// main table (the second dhclient uplink's "File exists"), so only a
// hook's lease can tell wanpin its gateway; the daemon and the CLI share
// a runtime directory.
func auditLeaseLab(t *testing.T) (*netlab.Lab, *daemon, string) {
	l := newLab(t, 2)
	run(t, l, l.Router, "ip", "-4", "route", "del", "default", "via", netlab.UplinkGateway4(2), "dev", "wan2")
	runtime := t.TempDir()
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1), "--runtime-dir", runtime)
	return l, d, runtime
}

// leaseBothThenStart runs a DHCP client of the kind on both uplinks,
// then starts the daemon and waits for both uplinks' IPv4.
func leaseBothThenStart(t *testing.T, l *netlab.Lab, d *daemon, kind netlab.ClientKind) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		c, err := l.StartDHCPClient(i, kind)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitLease(15 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, c.Log())
		}
	}
	d.start()
	waitUntil(t, 10*time.Second, "both uplinks' IPv4 up", func() (bool, string) {
		s := statusOf(t, d)
		return s.Uplinks[0].IPv4.State == "up" && s.Uplinks[1].IPv4.State == "up", fmt.Sprintf("%+v", s.Uplinks)
	})
}

// hookEvent runs `wanpin event` as a hook does and fails the test when
// it fails (the hooks log such a failure and drop the lease).
func hookEvent(t *testing.T, d *daemon, runtime string, args ...string) {
	t.Helper()
	out, code := d.cli(0, append(append([]string{"event"}, args...), "--runtime-dir", runtime)...)
	if code != 0 {
		t.Fatalf("wanpin event %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
}

func isp2Lease(t *testing.T, d *daemon, runtime, client string, extra ...string) {
	t.Helper()
	hookEvent(t, d, runtime, append([]string{"lease", "wan2", "--family", "4",
		"--address", netlab.UplinkAddr4(2) + "/29", "--gateway", netlab.UplinkGateway4(2), "--client", client}, extra...)...)
}

func waitISP2(t *testing.T, d *daemon, state string) {
	t.Helper()
	waitUntil(t, 5*time.Second, "isp2 IPv4 "+state, func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.State == state, fmt.Sprintf("%+v", u.IPv4)
	})
}

// TestTwoDHCPClientsLeaseLost: two DHCP clients on one uplink (ifupdown's
// dhclient and Debian's dhcpcd service, which runs on every interface).
// dhclient holds the lease wanpin follows; dhcpcd stopping (its STOP hook:
// lease-lost --client dhcpcd) must not take dhclient's lease away.
func TestTwoDHCPClientsLeaseLost(t *testing.T) {
	_, d, runtime := auditLeaseLab(t)
	isp2Lease(t, d, runtime, "dhclient")
	waitISP2(t, d, "up")
	hookEvent(t, d, runtime, "lease-lost", "wan2", "--family", "4", "--client", "dhcpcd")
	if ok, seen, _ := poll(2*time.Second, func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.State != "up", fmt.Sprintf("%+v", u.IPv4)
	}); ok {
		t.Errorf("dhcpcd's lease-lost took dhclient's lease of wan2 away: %s", seen)
	}
	if _, err := os.Stat(filepath.Join(runtime, "leases", "wan2.4")); err != nil {
		t.Errorf("dhclient's lease file is gone: %v", err)
	}
	// dhclient's own loss still counts.
	hookEvent(t, d, runtime, "lease-lost", "wan2", "--family", "4", "--client", "dhclient")
	waitISP2(t, d, "down")
}

// TestNetworkManagerLease: NetworkManager's dispatcher runs the
// shipped script with "wan2 up" and the DHCP4_* of the lease: wanpin
// learns the gateway and the resolver, and status says whose lease it is.
func TestNetworkManagerLease(t *testing.T) {
	_, d, runtime := auditLeaseLab(t)
	script := filepath.Join(repoRoot(t), "hooks", "dhcp", "nm-dispatcher")
	cmd := exec.Command(script, "wan2", "up")
	// The dispatcher's environment: the device's configuration, no PATH.
	cmd.Env = []string{"WANPIN_BIN=" + wanpinBin, "WANPIN_RUNTIME_DIR=" + runtime, "WANPIN_DEFAULTS=/nonexistent",
		"DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, "DEVICE_IFACE=wan2", "DEVICE_IP_IFACE=wan2", "NM_DISPATCHER_ACTION=up",
		"CONNECTION_ID=isp2", "IP4_NUM_ADDRESSES=1", "IP4_ADDRESS_0=" + netlab.UplinkAddr4(2) + "/29 " + netlab.UplinkGateway4(2),
		"IP4_GATEWAY=" + netlab.UplinkGateway4(2), "IP4_NAMESERVERS=" + netlab.ResolverAddr4(2),
		"DHCP4_IP_ADDRESS=" + netlab.UplinkAddr4(2), "DHCP4_SUBNET_MASK=255.255.255.248",
		"DHCP4_ROUTERS=" + netlab.UplinkGateway4(2), "DHCP4_DOMAIN_NAME_SERVERS=" + netlab.ResolverAddr4(2),
		"DHCP4_DHCP_LEASE_TIME=120"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nm-dispatcher: %v %s", err, out)
	}
	waitISP2(t, d, "up")
	u := statusOf(t, d).Uplinks[1]
	if !strings.Contains(u.IPv4.Reason, "NetworkManager lease") || len(u.IPv4.DNS) == 0 {
		t.Errorf("isp2 after NetworkManager's up: %+v", u.IPv4)
	}
}

// TestLeaseOddDNS: a lease whose DNS list holds one unusable entry
// (0.0.0.0, as misconfigured servers send) keeps its gateway and its
// usable resolvers.
func TestLeaseOddDNS(t *testing.T) {
	_, d, runtime := auditLeaseLab(t)
	out, code := d.cli(0, "event", "lease", "wan2", "--family", "4", "--address", netlab.UplinkAddr4(2)+"/29",
		"--gateway", netlab.UplinkGateway4(2), "--dns", "0.0.0.0,"+netlab.ResolverAddr4(2), "--client", "dhclient", "--runtime-dir", runtime)
	if code != 0 {
		t.Errorf("wanpin event lease: exit %d: %s", code, out)
	}
	waitISP2(t, d, "up")
	if dns := statusOf(t, d).Uplinks[1].IPv4.DNS; len(dns) != 1 || dns[0].String() != netlab.ResolverAddr4(2) {
		t.Errorf("isp2's resolvers %v, want %s alone", dns, netlab.ResolverAddr4(2))
	}
}

// TestRenewNewRouter: at a renewal the ISP's server hands out
// another router and another DNS server (same address): wanpin moves the
// uplink's default route to the new router and its resolver rule to the
// new server, and traffic keeps flowing through the uplink.
func TestRenewNewRouter(t *testing.T) {
	for _, kind := range []netlab.ClientKind{netlab.Dhclient, netlab.Dhcpcd} {
		t.Run(string(kind), func(t *testing.T) { testAuditRenewNewRouter(t, kind) })
	}
}

func testAuditRenewNewRouter(t *testing.T, kind netlab.ClientKind) {
	l := newLabWith(t, netlab.Options{ISPs: 2, DHCP: []int{1, 2}, DHCPRenewal: 3 * time.Second})
	runtime := t.TempDir()
	d := newDaemon(t, l, dhcpUplinks, "--runtime-dir", runtime)
	installHook(t, l, kind)
	if err := l.SetDefaults(map[string]string{
		"WANPIN_BIN": wanpinBin, "WANPIN_RUNTIME_DIR": runtime, "DBUS_SYSTEM_BUS_ADDRESS": d.busAddr,
	}); err != nil {
		t.Fatal(err)
	}
	leaseBothThenStart(t, l, d, kind)
	// ISP 2's second router, and a new resolver address.
	newRouter, newDNS := "198.51.100.14", "203.0.113.99"
	run(t, l, l.ISP(2), "ip", "addr", "add", newRouter+"/29", "dev", "cust")
	if err := l.SetLeaseOptions(2, newRouter, newDNS); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "isp2 on the new router and resolver", func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.State == "up" && u.IPv4.Gateway == newRouter &&
			len(u.IPv4.DNS) == 1 && u.IPv4.DNS[0].String() == newDNS, fmt.Sprintf("%+v", u.IPv4)
	})
	routes := run(t, l, l.Router, "ip", "-4", "route", "show", "table", "all", "proto", "119")
	if !strings.Contains(routes, "default via "+newRouter+" dev wan2") || strings.Contains(routes, "via "+netlab.UplinkGateway4(2)+" ") {
		t.Errorf("wanpin's routes after the renewal:\n%s", routes)
	}
	rules := run(t, l, l.Router, "ip", "-4", "rule", "show")
	if !strings.Contains(rules, "to "+newDNS) || strings.Contains(rules, "to "+netlab.ResolverAddr4(2)) {
		t.Errorf("resolver rules after the renewal:\n%s", rules)
	}
	// Traffic through isp2 (the stream port's policy) via the new router.
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if l.ISPOf(s.Peer()) != 2 {
		t.Errorf("stream through %s, want uplink 2", s.Peer())
	}
	if msg := stillFlowing(s); msg != "" {
		t.Errorf("stream through isp2's new router: %s", msg)
	}
}

// TestDhclientRestart: dhclient on uplink 2 (whose gateway only the
// lease knows) is restarted while a stream runs there (PREINIT, then
// REBOOT of the same lease): the uplink never goes down and the stream
// flows on. Then the daemon stops, the lease renews with a new router
// while it is down (the hook records it), and the daemon started again
// uses the new router.
func TestDhclientRestart(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 2, DHCP: []int{1, 2}, DHCPRenewal: 3 * time.Second})
	runtime := t.TempDir()
	d := newDaemon(t, l, dhcpUplinks, "--runtime-dir", runtime)
	installHook(t, l, netlab.Dhclient)
	if err := l.SetDefaults(map[string]string{
		"WANPIN_BIN": wanpinBin, "WANPIN_RUNTIME_DIR": runtime, "DBUS_SYSTEM_BUS_ADDRESS": d.busAddr,
	}); err != nil {
		t.Fatal(err)
	}
	var clients []*netlab.DHCPClient
	for i := 1; i <= 2; i++ {
		c, err := l.StartDHCPClient(i, netlab.Dhclient)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitLease(15 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, c.Log())
		}
		clients = append(clients, c)
	}
	d.start()
	waitUntil(t, 10*time.Second, "both uplinks' IPv4 up", func() (bool, string) {
		s := statusOf(t, d)
		return s.Uplinks[0].IPv4.State == "up" && s.Uplinks[1].IPv4.State == "up", fmt.Sprintf("%+v", s.Uplinks)
	})
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	leases := strings.Count(d.log(), `msg=lease interface=wan2`)
	if err := clients[1].Renew(); err != nil {
		t.Fatal(err)
	}
	// The restart's REBOOT reaches the daemon (same lease: maybe no new
	// log line), so wait for dhclient's own log of it.
	waitUntil(t, 15*time.Second, "dhclient's REBOOT", func() (bool, string) {
		lg := clients[1].Log()
		return strings.Count(lg, "DHCPACK") >= 2 || strings.Count(lg, "bound to") >= 2, lg
	})
	if msg := stillFlowing(s); msg != "" {
		t.Errorf("the stream on isp2 across dhclient's restart: %s", msg)
	}
	if strings.Contains(d.log(), `uplink down" uplink=isp2`) {
		t.Errorf("isp2 went down across dhclient's restart (%d lease lines before):\n%s", leases, d.log())
	}
	if u := statusOf(t, d).Uplinks[1]; u.IPv4.State != "up" {
		t.Errorf("isp2 after dhclient's restart: %+v", u.IPv4)
	}

	// The daemon stops; the lease renews with another router meanwhile.
	d.stop(syscall.SIGTERM)
	newRouter := "198.51.100.14"
	run(t, l, l.ISP(2), "ip", "addr", "add", newRouter+"/29", "dev", "cust")
	if err := l.SetLeaseOptions(2, newRouter, netlab.ResolverAddr4(2)); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(runtime, "leases", "wan2.4")
	waitUntil(t, 15*time.Second, "the hook to record the renewal", func() (bool, string) {
		b, err := os.ReadFile(file)
		return err == nil && strings.Contains(string(b), "gateways="+newRouter), fmt.Sprint(string(b), err)
	})
	d.start()
	waitUntil(t, 10*time.Second, "isp2 up on the new router after the restart", func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.State == "up" && u.IPv4.Gateway == newRouter, fmt.Sprintf("%+v", u.IPv4)
	})
	if counts, err := l.CurlMany(20); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("balancing after the daemon's restart: %v %v", counts, err)
	}
}

// TestLeaseExpiry: ISP 2's DHCP server stops answering and the
// lease runs out while the link stays up: dhclient's EXPIRE (the script
// flushes the address) takes uplink 2 out, its lease file goes, and
// uplink 1 carries everything.
func TestLeaseExpiry(t *testing.T) {
	l := newLabWith(t, netlab.Options{ISPs: 2, DHCP: []int{1, 2}, DHCPRenewal: 3 * time.Second})
	runtime := t.TempDir()
	d := newDaemon(t, l, dhcpUplinks, "--runtime-dir", runtime)
	installHook(t, l, netlab.Dhclient)
	if err := l.SetDefaults(map[string]string{
		"WANPIN_BIN": wanpinBin, "WANPIN_RUNTIME_DIR": runtime, "DBUS_SYSTEM_BUS_ADDRESS": d.busAddr,
	}); err != nil {
		t.Fatal(err)
	}
	leaseBothThenStart(t, l, d, netlab.Dhclient)
	run(t, l, l.ISP(2), "nft", "add table inet audit; add chain inet audit in { type filter hook input priority -10; }; add rule inet audit in udp dport 67 drop")
	waitUntil(t, netlab.LeaseTime+30*time.Second, "isp2's IPv4 down after the lease expired", func() (bool, string) {
		u := statusOf(t, d).Uplinks[1]
		return u.IPv4.State == "down", fmt.Sprintf("%+v", u.IPv4)
	})
	t.Logf("isp2 after expiry: %+v", statusOf(t, d).Uplinks[1].IPv4)
	waitUntil(t, 5*time.Second, "the lease file removed", func() (bool, string) {
		_, err := os.Stat(filepath.Join(runtime, "leases", "wan2.4"))
		return os.IsNotExist(err), fmt.Sprint(err)
	})
	if counts, err := l.CurlMany(20); err != nil || counts[1] != 20 {
		t.Errorf("after isp2's lease expired: %v %v", counts, err)
	}
}

// TestLeaseOfNoUplink: the LAN's own DHCP client (Debian's dhcpcd runs
// on every interface) reports through the same hooks: wanpin event
// exits 0 for a lease and a lease-lost of lan0, which no uplink uses,
// and nothing changes for the uplinks. Before, each renewal failed the
// hook ("no uplink uses interface lan0"), logged to syslog.
func TestLeaseOfNoUplink(t *testing.T) {
	_, d, runtime := auditLeaseLab(t)
	before := rawState(t, d)
	hookEvent(t, d, runtime, "lease", "lan0", "--family", "4", "--address", netlab.LANRouter4+"/26", "--client", "dhcpcd")
	hookEvent(t, d, runtime, "lease-lost", "lan0", "--family", "4", "--client", "dhcpcd")
	if after := rawState(t, d); after != before {
		t.Errorf("a lease of lan0 changed wanpin's state:\n--- before\n%s--- after\n%s", before, after)
	}
	if strings.Contains(d.log(), "level=ERROR") {
		t.Errorf("errors in the log:\n%s", d.log())
	}
}
