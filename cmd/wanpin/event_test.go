package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/inet"
)

// The leased address as the clients give it.
func TestLeaseAddress(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.2/29":              "198.51.100.2/29",
		"198.51.100.2":                 "198.51.100.2/32",
		"198.51.100.2/255.255.255.248": "198.51.100.2/29",
		"":                             "",
	} {
		if got, err := leaseAddress(in, inet.IPv4); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	if got, err := leaseAddress("2001:db8:1::2", inet.IPv6); err != nil || got != "2001:db8:1::2/128" {
		t.Errorf("bare IPv6: %q %v", got, err)
	}
	for _, bad := range []string{"198.51.100.2/255.0.255.0", "2001:db8::2/255.255.255.0", "nonsense", "198.51.100.2/x.y"} {
		f := inet.IPv4
		if strings.HasPrefix(bad, "2001") {
			f = inet.IPv6
		}
		if got, err := leaseAddress(bad, f); err == nil {
			t.Errorf("%q accepted as %q", bad, got)
		}
	}
}

// A hook's event while the daemon is not running records the lease and
// succeeds (the hooks log failures only); a bad lease fails at once and
// records nothing.
func TestEventWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(dir, "no-bus"))
	var stderr bytes.Buffer
	code := cmdEvent([]string{"lease", "wan1", "--family", "4", "--address", "198.51.100.2/255.255.255.248",
		"--gateway", "198.51.100.1", "--dns", "203.0.113.53", "--client", "dhclient", "--runtime-dir", dir}, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), "the daemon is not running") {
		t.Errorf("lease without a daemon: exit %d, %q", code, stderr.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "leases", "wan1.4"))
	if err != nil || !strings.Contains(string(b), "address=198.51.100.2/29") || !strings.Contains(string(b), "dns=203.0.113.53") {
		t.Errorf("recorded lease: %q %v", b, err)
	}
	stderr.Reset()
	if code := cmdEvent([]string{"up", "ppp0", "--local", "198.51.100.18"}, &stderr); code != 0 {
		t.Errorf("up without a daemon: exit %d, %q", code, stderr.String())
	}
	stderr.Reset()
	if code := cmdEvent([]string{"lease", "wan2", "--family", "4", "--address", "bogus", "--runtime-dir", dir}, &stderr); code == 0 {
		t.Error("a bad lease succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "leases", "wan2.4")); err == nil {
		t.Error("a bad lease was recorded")
	}
}

// A value with a line break cannot add lines of its own to the lease
// file: --gateway "G\naddress=A" used to record address A instead of the
// --address given.
func TestEventLeaseLineBreakRefused(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(dir, "no-bus"))
	for _, flag := range []string{"--gateway", "--dns", "--client"} {
		args := map[string]string{"--gateway": "198.51.100.1", "--dns": "203.0.113.53", "--client": "dhclient"}
		args[flag] = map[string]string{"--gateway": "198.51.100.1", "--dns": "203.0.113.53", "--client": "dhclient"}[flag] + "\naddress=192.0.2.99/8"
		var stderr bytes.Buffer
		code := cmdEvent([]string{"lease", "wan1", "--family", "4", "--address", "198.51.100.2/29",
			"--gateway", args["--gateway"], "--dns", args["--dns"], "--client", args["--client"], "--runtime-dir", dir}, &stderr)
		if code == 0 || !strings.Contains(stderr.String(), "line break") {
			t.Errorf("%s with a line break: exit %d, %q", flag, code, stderr.String())
		}
		if b, err := os.ReadFile(filepath.Join(dir, "leases", "wan1.4")); err == nil {
			t.Errorf("%s with a line break: recorded %q", flag, b)
		}
	}
}

// Two clients on one interface: a lease-lost of one keeps the lease the
// other reported (the uplink's gateway may be known from it alone); its
// own client's loss, or one naming no client, removes it.
func TestEventLeaseLostOfAnotherClient(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a lease file counts only when root owns it")
	}
	dir := t.TempDir()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(dir, "no-bus"))
	file := filepath.Join(dir, "leases", "wan1.4")
	lease := func(client string) {
		t.Helper()
		var stderr bytes.Buffer
		if code := cmdEvent([]string{"lease", "wan1", "--family", "4", "--address", "198.51.100.2/29",
			"--gateway", "198.51.100.1", "--client", client, "--runtime-dir", dir}, &stderr); code != 0 {
			t.Fatalf("lease: exit %d, %q", code, stderr.String())
		}
	}
	lost := func(args ...string) {
		t.Helper()
		var stderr bytes.Buffer
		if code := cmdEvent(append([]string{"lease-lost", "wan1", "--family", "4", "--runtime-dir", dir}, args...), &stderr); code != 0 {
			t.Fatalf("lease-lost %v: exit %d, %q", args, code, stderr.String())
		}
	}
	lease("dhclient")
	lost("--client", "dhcpcd")
	if _, err := os.Stat(file); err != nil {
		t.Errorf("dhcpcd's lease-lost removed dhclient's lease: %v", err)
	}
	lost("--client", "dhclient")
	if _, err := os.Stat(file); err == nil {
		t.Error("dhclient's lease-lost kept its lease")
	}
	lease("NetworkManager")
	lost()
	if _, err := os.Stat(file); err == nil {
		t.Error("a lease-lost naming no client kept the lease")
	}
}

// A lease whose DNS list holds an unusable entry (0.0.0.0 from a
// misconfigured server) is recorded with its gateway and usable servers.
func TestEventLeaseUnusableDNS(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(dir, "no-bus"))
	var stderr bytes.Buffer
	code := cmdEvent([]string{"lease", "wan1", "--family", "4", "--address", "198.51.100.2/29",
		"--gateway", "198.51.100.1", "--dns", "0.0.0.0,203.0.113.53", "--client", "dhclient", "--runtime-dir", dir}, &stderr)
	b, err := os.ReadFile(filepath.Join(dir, "leases", "wan1.4"))
	if code != 0 || err != nil || !strings.Contains(string(b), "gateways=198.51.100.1\n") || !strings.Contains(string(b), "dns=203.0.113.53\n") {
		t.Errorf("exit %d, %q; recorded %q %v", code, stderr.String(), b, err)
	}
}
