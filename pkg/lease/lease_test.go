package lease

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	k := core.LeaseKey{Interface: "wan1", Family: inet.IPv4}
	l := core.Lease{Address: netip.MustParsePrefix("198.51.100.2/29"), Gateways: []netip.Addr{netip.MustParseAddr("198.51.100.1")},
		DNS: []netip.Addr{netip.MustParseAddr("203.0.113.53")}, Client: "dhclient"}
	if err := Write(dir, k, &l); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir, k)
	if os.Geteuid() != 0 {
		t.Skip("the owner check needs root")
	}
	if err != nil || !reflect.DeepEqual(*got, l) {
		t.Fatalf("read back %+v, %v; want %+v", got, err, l)
	}
	all, errs := ReadAll(dir, []string{"wan1", "wan2"})
	if len(errs) != 0 || len(all) != 1 {
		t.Errorf("ReadAll: %v %v", all, errs)
	}
	if err := Write(dir, k, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(dir, k); got != nil || err != nil {
		t.Errorf("after removal: %v %v", got, err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, text := range map[string]string{
		"no address":     "client=dhclient\ngateways=198.51.100.1\n",
		"wrong family":   "address=2001:db8::2/64\n",
		"bad gateway":    "address=198.51.100.2/29\ngateways=198.51.100.1;rm -rf\n",
		"multicast dns":  "address=198.51.100.2/29\ndns=224.0.0.1\n",
		"unknown key":    "address=198.51.100.2/29\nevil=1\n",
		"shell in name":  "client=$(reboot)\naddress=198.51.100.2/29\n",
		"not key=value":  "address 198.51.100.2/29\n",
		"loopback route": "address=198.51.100.2/29\ngateways=127.0.0.1\n",
	} {
		if _, err := Parse([]byte(text), inet.IPv4); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	l, err := Parse([]byte("client=dhcpcd\ngateways=fe80::1\ndns=2001:db8:53::1\n"), inet.IPv6)
	if err != nil || l.Gateways[0] != netip.MustParseAddr("fe80::1") {
		t.Errorf("IPv6 lease without an address: %+v %v", l, err)
	}
	// Any digit in a client's name (the cutset once held "0-9", which is
	// the three characters 0, - and 9).
	if l, err := Parse([]byte("client=ppp1-dhcp6\naddress=198.51.100.2/29\n"), inet.IPv4); err != nil || l.Client != "ppp1-dhcp6" {
		t.Errorf("client ppp1-dhcp6: %+v %v", l, err)
	}
	// The NetworkManager dispatcher hook's name for its client.
	if l, err := Parse([]byte("client=NetworkManager\naddress=198.51.100.2/29\n"), inet.IPv4); err != nil || l.Client != "NetworkManager" {
		t.Errorf("client NetworkManager: %+v %v", l, err)
	}
}

func TestReadRefusesUnsafeFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	k := core.LeaseKey{Interface: "wan1", Family: inet.IPv4}
	path := filepath.Join(Dir(dir), Name(k))
	os.MkdirAll(Dir(dir), 0o755)
	os.WriteFile(path, []byte("address=198.51.100.2/29\n"), 0o666)
	os.Chmod(path, 0o666)
	if _, err := Read(dir, k); err == nil {
		t.Error("a world-writable lease file was read")
	}
	os.Remove(path)
	os.Symlink("/etc/passwd", path)
	if _, err := Read(dir, k); err == nil {
		t.Error("a symlink was followed")
	}
}

// A hook's DNS list: unicast servers of the family kept, the rest dropped.
func TestUsableDNS(t *testing.T) {
	kept, dropped := UsableDNS("0.0.0.0, 203.0.113.53,127.0.0.1,,2001:db8::53,224.0.0.1,203.0.113.54", inet.IPv4)
	if strings.Join(kept, ",") != "203.0.113.53,203.0.113.54" || strings.Join(dropped, ",") != "0.0.0.0,127.0.0.1,2001:db8::53,224.0.0.1" {
		t.Errorf("kept %v, dropped %v", kept, dropped)
	}
	if kept, dropped := UsableDNS("fe80::1,2001:db8:53::1", inet.IPv6); len(kept) != 1 || len(dropped) != 1 {
		t.Errorf("IPv6: kept %v, dropped %v", kept, dropped)
	}
}
