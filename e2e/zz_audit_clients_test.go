package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// TestAuditTwoClientsLeaseLost: two DHCP clients on one uplink (ifupdown's
// dhclient and Debian's dhcpcd service, which runs on every interface).
// dhclient holds the lease wanpin follows; dhcpcd stopping (its STOP hook:
// lease-lost --client dhcpcd) must not take dhclient's lease away.
func TestAuditTwoClientsLeaseLost(t *testing.T) {
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

// TestAuditNetworkManagerLease: NetworkManager's dispatcher runs the
// shipped script with "wan2 up" and the DHCP4_* of the lease: wanpin
// learns the gateway and the resolver, and status says whose lease it is.
func TestAuditNetworkManagerLease(t *testing.T) {
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

// TestAuditLeaseOddDNS: a lease whose DNS list holds one unusable entry
// (0.0.0.0, as misconfigured servers send) keeps its gateway and its
// usable resolvers.
func TestAuditLeaseOddDNS(t *testing.T) {
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
