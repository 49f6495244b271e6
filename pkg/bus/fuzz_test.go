package bus

import (
	"strings"
	"testing"
)

// FuzzCheckEvent: whatever a caller sends as an Event, validation never
// panics, and what it accepts is well-formed.
func FuzzCheckEvent(f *testing.F) {
	f.Add("up", "ppp0", "198.51.100.18", "198.51.100.17", "")
	f.Add("down", "eth0.100", "", "", "")
	f.Add("sideways", "ppp0", "x", "y", "z")
	f.Add("up", "a/b", "::1", "fe80::1%eth0", "extra")
	f.Add("up", strings.Repeat("x", 20), "", "", "")
	f.Fuzz(func(t *testing.T, kind, iface, local, peer, extra string) {
		args := map[string]any{}
		if local != "" {
			args["local"] = local
		}
		if peer != "" {
			args["peer"] = peer
		}
		if extra != "" {
			args[extra] = extra
		}
		l, p, err := checkEvent(kind, iface, args)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if kind != "up" && kind != "down" || !validIfname(iface) {
			t.Fatalf("accepted kind %q iface %q", kind, iface)
		}
		if local != "" && !l.IsValid() || peer != "" && !p.IsValid() {
			t.Fatalf("accepted without parsing: %q %q", local, peer)
		}
	})
}
