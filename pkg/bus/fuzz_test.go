package bus

import (
	"slices"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/pkg/ifname"
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
		ea, err := checkEvent(kind, iface, args)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if !slices.Contains(EventKinds, kind) || ifname.Check(iface) != nil {
			t.Fatalf("accepted kind %q iface %q", kind, iface)
		}
		if local != "" && !ea.Local.IsValid() || peer != "" && !ea.Peer.IsValid() {
			t.Fatalf("accepted without parsing: %q %q", local, peer)
		}
	})
}

// FuzzCheckFlow: whatever a caller sends to Explain, decoding never panics
// and what it accepts has a destination.
func FuzzCheckFlow(f *testing.F) {
	f.Add(`{"dst":"203.0.113.10","proto":6,"dport":443}`)
	f.Add(`{"dst":"2001:db8::1","src":"192.0.2.1"}`)
	f.Add(`{"dst":"203.0.113.10","local":true,"uid":1001,"gid":1001,"cgroups":[1,2,3]}`)
	f.Add(`{"dst":"x"}`)
	f.Add(`{"dst":"203.0.113.10","iif":"a/b"}`)
	f.Add(`{"dst":"203.0.113.10","extra":1}`)
	f.Add(strings.Repeat("[", 5000))
	f.Fuzz(func(t *testing.T, s string) {
		fl, err := checkFlow(s)
		if err != nil {
			return
		}
		if !fl.Dst.IsValid() || len(fl.Cgroups) > 256 {
			t.Fatalf("accepted %q as %+v", s, fl)
		}
	})
}
