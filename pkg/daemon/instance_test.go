package daemon

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/wanpin/wanpin/internal/nstest"
)

// One instance per network namespace: a second lock in the namespace is
// refused with the holder's pid, another namespace has its own, and the
// lock is free again once released.
func TestInstanceLock(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	ns, ns2 := nstest.New(t, "wpi"), nstest.New(t, "wpj")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(netns.NsHandle(ns.Handle)); err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	first, err := lockInstance()
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	_, err = lockInstance()
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("second lock: %v (want the holder's pid %d)", err, os.Getpid())
	}
	// Another namespace has its own socket.
	netns.Set(netns.NsHandle(ns2.Handle))
	other, err := lockInstance()
	if err != nil {
		t.Errorf("lock in another namespace: %v", err)
	}
	other.release()
	netns.Set(netns.NsHandle(ns.Handle))
	first.release()
	again, err := lockInstance()
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.release()
}
