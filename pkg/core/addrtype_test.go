package core

import (
	"net/netip"
	"testing"
)

// TestAddrTypeOf: what the kernel decides from the address alone, before
// any table.
func TestAddrTypeOf(t *testing.T) {
	for addr, want := range map[string]AddrType{
		"0.0.0.0": AddrBroadcast, "0.1.2.3": AddrBroadcast, "255.255.255.255": AddrBroadcast,
		"::ffff:255.255.255.255": AddrBroadcast, "224.0.0.1": AddrMulticast, "239.255.255.250": AddrMulticast,
		"ff02::1": AddrMulticast, "ff05::2": AddrMulticast, "192.0.2.63": AddrUnicast, "192.0.2.1": AddrUnicast,
		"fe80::1": AddrUnicast, "2001:db8::1": AddrUnicast,
	} {
		if got := AddrTypeOf(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %v, want %v", addr, got, want)
		}
	}
}
