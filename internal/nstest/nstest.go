// Package nstest gives kernel tests a fresh, named network namespace that
// is deleted when the test ends, so nothing a test does can reach the
// machine's own network.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace owned by one test.
type NS struct {
	Name   string
	Handle netns.NsHandle
}

// New creates a namespace named prefix-<random> with lo up, or skips the
// test when not root or when ip is missing.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := prefix + "-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("opening netns %s: %v", name, err)
	}
	ns := &NS{Name: name, Handle: h}
	t.Cleanup(func() {
		h.Close()
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// RequireRoot skips the test unless it runs as root with ip available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
}

// Run runs a command inside the namespace and fails the test on error.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the namespace and returns its output.
func (n *NS) Try(args ...string) (string, error) {
	full := append([]string{"netns", "exec", n.Name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	return string(out), err
}
