package watch

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/internal/nstest"
	"github.com/wanpin/wanpin/pkg/inet"
)

func TestSnapshot(t *testing.T) {
	ns := nstest.New(t, "wpw")
	ns.Run(t, "ip", "link", "add", "wan1", "type", "veth", "peer", "isp1")
	ns.Run(t, "ip", "link", "set", "wan1", "up")
	ns.Run(t, "ip", "addr", "add", "198.51.100.2/29", "dev", "wan1")
	ns.Run(t, "ip", "link", "add", "ppp0", "type", "veth", "peer", "isp2")
	ns.Run(t, "ip", "link", "set", "ppp0", "up")
	ns.Run(t, "ip", "link", "set", "isp2", "up")
	ns.Run(t, "ip", "addr", "add", "198.51.100.10", "peer", "198.51.100.9/32", "dev", "ppp0")
	o, err := NewObserver(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	snap, err := o.Snapshot([]string{"wan1", "ppp0", "wwan0"})
	if err != nil {
		t.Fatal(err)
	}
	if l := snap["wan1"]; !l.Exists || !l.AdminUp || l.Carrier || len(l.Addrs) != 1 {
		t.Errorf("wan1 (peer down, so no carrier): %+v", l)
	}
	if l := snap["ppp0"]; !l.Carrier || len(l.Addrs) != 1 || l.Addrs[0].Peer.String() != "198.51.100.9" {
		t.Errorf("ppp0: %+v", l)
	}
	if l := snap["wwan0"]; l.Exists {
		t.Errorf("wwan0 should not exist: %+v", l)
	}
	// The main table's default route through an interface is its gateway.
	ns.Run(t, "ip", "link", "set", "isp1", "up")
	ns.Run(t, "ip", "route", "add", "default", "via", "198.51.100.1", "dev", "wan1", "metric", "100")
	snap, _ = o.Snapshot([]string{"wan1"})
	if l := snap["wan1"]; !l.Carrier || l.Gateway.Get(inet.IPv4).String() != "198.51.100.1" {
		t.Errorf("wan1 with a default route: %+v", l)
	}
}

func TestWatchSignals(t *testing.T) {
	ns := nstest.New(t, "wpw")
	ctx, cancel := context.WithCancel(context.Background())
	before := runtime.NumGoroutine()
	ch := Watch(ctx, netns.NsHandle(ns.Handle), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	wait := func(what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(3 * time.Second):
			t.Fatalf("no signal for %s", what)
		}
	}
	wait("subscription start")
	ns.Run(t, "ip", "link", "add", "wan1", "type", "veth", "peer", "isp1")
	wait("a new link")
	// Drain what the link creation caused, then change an address.
	time.Sleep(50 * time.Millisecond)
	for len(ch) > 0 {
		<-ch
	}
	ns.Run(t, "ip", "addr", "add", "198.51.100.2/29", "dev", "wan1")
	wait("a new address")
	cancel()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after cancel, %d before", n, before)
	}
}
