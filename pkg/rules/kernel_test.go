package rules

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const nftBin = "/usr/sbin/nft"

// testNS is a throwaway named network namespace. Every kernel change of
// these tests happens inside one; the host namespace is never touched.
type testNS struct {
	name string
	fd   int
}

func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, nftables)")
	}
	if _, err := os.Stat(nftBin); err != nil {
		tb.Skipf("needs %s: %v", nftBin, err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs ip (iproute2)")
	}
}

func newNS(tb testing.TB) *testNS {
	tb.Helper()
	needRoot(tb)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	name := "wpr-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &testNS{name: name, fd: -1}
	// Registered before anything can fail, so the namespace goes away
	// whatever happens next.
	tb.Cleanup(func() {
		if ns.fd >= 0 {
			unix.Close(ns.fd)
		}
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	ns.fd = fd
	return ns
}

// nft runs the nft CLI inside the namespace.
func (ns *testNS) nft(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, nftBin}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (ns *testNS) mustNft(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := ns.nft(args...)
	if err != nil {
		tb.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func (ns *testNS) manager(tb testing.TB, opts ...Option) *Manager {
	tb.Helper()
	m, err := New(append([]Option{WithNetNS(ns.fd)}, opts...)...)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

var (
	// The table's flags line and the blank line nft prints after it. nft
	// 1.0.6 knows no name for persist: an orphan lists as "flags ".
	flagsLine = regexp.MustCompile(`(?m)^\tflags [a-z,]*\n\n`)
	// nft notes the owning process of an owner table after the brace.
	progComment = regexp.MustCompile(`(?m)^(table inet \S+ \{) # progname \S+$`)
)

// normalizeListing removes from `nft list table` output what Render cannot
// know: who owns the table and its flags (owner/persist depend on kernel
// and on the Manager, not on the Spec).
func normalizeListing(s string) string {
	s = progComment.ReplaceAllString(s, "$1")
	return flagsLine.ReplaceAllString(s, "")
}
