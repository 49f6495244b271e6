package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// repoRoot is the repository, for the hook scripts the package ships.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// installHook copies the shipped hook of the client kind to where the
// Debian package puts it, under the name it has there: dhclient's exit
// hook as /etc/dhcp/dhclient-exit-hooks.d/wanpin, dhcpcd's as
// /usr/lib/dhcpcd/dhcpcd-hooks/90-wanpin (of the router's view).
func installHook(t *testing.T, l *netlab.Lab, kind netlab.ClientKind) {
	t.Helper()
	src, name := "dhclient-exit-hook", "wanpin"
	if kind == netlab.Dhcpcd {
		src, name = "dhcpcd-hook", "90-wanpin"
	}
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "hooks", "dhcp", src))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.InstallHooks(kind, path); err != nil {
		t.Fatal(err)
	}
}

// dhcpUplinks is two uplinks with nothing but their interfaces: address,
// gateway and resolvers come from the DHCP clients' hooks; the stream's
// port is pinned to uplink 2.
const dhcpUplinks = `
[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"

[[policy]]
name = "stream"
protocol = "tcp"
ports = ["8082"]
uplinks = ["isp2"]
`

// TestDHCPUplinks: two uplinks configured by the real client (Debian's
// isc-dhcp-client with dhclient-script and no metrics, or dhcpcd), with
// wanpin's shipped hook. The hooks run while the daemon is down, and the
// daemon starts from the leases they recorded: both uplinks up, their
// gateways and resolvers those of the leases, both balanced (with
// dhclient the second lease's default route never made it into the main
// table: only the hook knows that gateway). Uplink 1's lease moves to a
// new address: wanpin follows it, flushes the conntrack entries NATed to
// the old one, and a stream on uplink 2 carries on. A carrier flap of
// uplink 1, and one on the router's side, bring it back.
func TestDHCPUplinks(t *testing.T) {
	for _, kind := range []netlab.ClientKind{netlab.Dhclient, netlab.Dhcpcd} {
		t.Run(string(kind), func(t *testing.T) { testDHCPUplinks(t, kind) })
	}
}

func testDHCPUplinks(t *testing.T, kind netlab.ClientKind) {
	l := newLabWith(t, netlab.Options{ISPs: 2, DHCP: []int{1, 2}})
	runtime := t.TempDir()
	d := newDaemon(t, l, dhcpUplinks, "--runtime-dir", runtime)
	installHook(t, l, kind)
	if err := l.SetDefaults(map[string]string{
		"WANPIN_BIN": wanpinBin, "WANPIN_RUNTIME_DIR": runtime, "DBUS_SYSTEM_BUS_ADDRESS": d.busAddr,
	}); err != nil {
		t.Fatal(err)
	}
	var clients []*netlab.DHCPClient
	for i := 1; i <= 2; i++ {
		c, err := l.StartDHCPClient(i, kind)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	// The hooks run after the address is set: wait for what they wrote.
	for i, c := range clients {
		if _, err := c.WaitLease(15 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, c.Log())
		}
		lease := filepath.Join(runtime, "leases", fmt.Sprintf("wan%d.4", i+1))
		waitUntil(t, 5*time.Second, "the hook to record "+lease, func() (bool, string) {
			b, err := os.ReadFile(lease)
			return err == nil && strings.Contains(string(b), netlab.UplinkGateway4(i+1)), fmt.Sprint(string(b), err)
		})
	}
	if kind == netlab.Dhclient {
		if out := run(t, l, l.Router, "ip", "-4", "route", "show", "default"); strings.Contains(out, "wan2") {
			t.Logf("the main table has a default route via wan2 after all:\n%s", out)
		}
	}

	d.start()
	waitUntil(t, 5*time.Second, "both uplinks up from their leases", func() (bool, string) {
		s := statusOf(t, d)
		return s.Uplinks[0].State == "up" && s.Uplinks[1].State == "up", fmt.Sprintf("%+v", s.Uplinks)
	})
	s := statusOf(t, d)
	for i, u := range s.Uplinks {
		if u.IPv4.Gateway != netlab.UplinkGateway4(i+1) || !slices.ContainsFunc(u.IPv4.DNS, func(a netip.Addr) bool { return a.String() == netlab.ResolverAddr4(i+1) }) {
			t.Errorf("uplink %s: gateway %q, resolvers %v (want %s and %s, from the lease)",
				u.Name, u.IPv4.Gateway, u.IPv4.DNS, netlab.UplinkGateway4(i+1), netlab.ResolverAddr4(i+1))
		}
	}
	if !strings.Contains(d.log(), "gateway "+netlab.UplinkGateway4(2)+" from the") || !strings.Contains(d.log(), "lease") {
		t.Errorf("the log does not say where uplink 2's gateway came from:\n%s", d.log())
	}
	if counts, err := l.CurlMany(40); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Fatalf("balancing over the two DHCP uplinks: %v %v", counts, err)
	}
	// The router's own queries to each ISP's resolver leave through that
	// ISP (which answers only its own customer).
	for i := 1; i <= 2; i++ {
		if _, err := l.Dig(l.Router, netlab.ResolverAddr4(i), netlab.NameWWW, "+time=2"); err != nil {
			t.Errorf("the router asking ISP %d's resolver: %v", i, err)
		}
	}

	stream, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if l.ISPOf(stream.Peer()) != 2 {
		t.Fatalf("stream through %s, want uplink 2", stream.Peer())
	}
	// Connections NATed to uplink 1's address: their conntrack entries
	// outlive the connections (TIME_WAIT).
	old, moved := netlab.UplinkAddr4(1), "198.51.100.3"
	if counts, err := l.CurlMany(20); err != nil || counts[1] == 0 {
		t.Fatalf("curls before the move: %v %v", counts, err)
	}
	if n := natEntries(t, l, old); n == 0 {
		t.Fatalf("no conntrack entry NATed to %s before the move", old)
	}
	moveStart := time.Now()
	if err := l.MoveLease(1, moved, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "uplink 1 on its new address", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.State == "up" && slices.ContainsFunc(u.IPv4.Addresses, func(a netip.Addr) bool { return a.String() == moved }), fmt.Sprintf("%+v", u.IPv4)
	})
	waitUntil(t, 5*time.Second, "the entries NATed to the old address flushed", func() (bool, string) {
		n := natEntries(t, l, old)
		return n == 0, fmt.Sprintf("%d entries", n)
	})
	t.Logf("%s: lease moved from %s to %s, followed and flushed in %v", kind, old, moved, time.Since(moveStart).Round(time.Millisecond))
	if !strings.Contains(d.log(), `msg="conntrack flushed" uplink=isp1 address=`+old) {
		t.Errorf("no log line for the flush of %s:\n%s", old, d.log())
	}
	if msg := stillFlowing(stream); msg != "" {
		t.Errorf("the stream on uplink 2 after uplink 1's lease moved: %s", msg)
	}
	waitUntil(t, 5*time.Second, "connections through uplink 1's new address", func() (bool, string) {
		counts, err := l.CurlMany(20)
		return err == nil && counts[1] > 0 && counts[2] > 0, fmt.Sprint(counts, err)
	})

	// A carrier flap: down while the carrier is gone, up again after.
	if err := l.SetCarrier(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink down" uplink=isp1`, 1, 5*time.Second)
	if err := l.SetCarrier(1, true); err != nil {
		t.Fatal(err)
	}
	flapEnd := time.Now()
	waitUntil(t, 15*time.Second, "uplink 1's IPv4 back after the flap", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.IPv4.State == "up", u.IPv4.Reason
	})
	t.Logf("%s: uplink 1's IPv4 up %v after its carrier came back: %s", kind, time.Since(flapEnd).Round(time.Millisecond), statusOf(t, d).Uplinks[0].IPv4.Reason)
	// And a flap on the router's side (`ip link set wan1 down; up`): the
	// kernel drops the interface's routes with it, and dhclient, which
	// sees nothing, never puts its default route back; the gateway the
	// hook handed over stays while the lease's address does.
	run(t, l, l.Router, "ip", "link", "set", "wan1", "down")
	d.waitFor(`uplink down" uplink=isp1`, 2, 5*time.Second)
	run(t, l, l.Router, "ip", "link", "set", "wan1", "up")
	flapEnd = time.Now()
	waitUntil(t, 15*time.Second, "uplink 1's IPv4 back after ip link set down and up", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.IPv4.State == "up", u.IPv4.Reason
	})
	t.Logf("%s: uplink 1's IPv4 up %v after ip link set up: %s", kind, time.Since(flapEnd).Round(time.Millisecond), statusOf(t, d).Uplinks[0].IPv4.Reason)
	waitUntil(t, 5*time.Second, "balancing over both after the flap", func() (bool, string) {
		counts, err := l.CurlMany(20)
		return err == nil && counts[1] > 0 && counts[2] > 0, fmt.Sprint(counts, err)
	})
	if msg := stillFlowing(stream); msg != "" {
		t.Errorf("the stream on uplink 2 after uplink 1's flap: %s", msg)
	}
}

// natEntries counts the router's conntrack entries whose replies go to
// addr (the connections NATed to it).
func natEntries(t *testing.T, l *netlab.Lab, addr string) int {
	t.Helper()
	out, _ := l.Exec(l.Router, "conntrack", "-L", "-f", "ipv4", "--reply-dst", addr)
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "dst="+addr) {
			n++
		}
	}
	return n
}
