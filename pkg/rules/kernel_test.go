package rules

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/nstest"
)

const nftBin = "/usr/sbin/nft"

// testNS is a throwaway named network namespace (internal/nstest). Every
// kernel change of these tests happens inside one.
type testNS struct {
	*nstest.NS
	fd int
}

func newNS(tb testing.TB) *testNS {
	tb.Helper()
	if _, err := os.Stat(nftBin); err != nil {
		tb.Skipf("needs %s: %v", nftBin, err)
	}
	ns := nstest.New(tb, "wpr")
	return &testNS{NS: ns, fd: int(ns.Handle)}
}

// nft runs the nft CLI inside the namespace.
func (ns *testNS) nft(args ...string) (string, error) {
	return ns.Try(append([]string{nftBin}, args...)...)
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
// and on the Manager, not on the desired.NFT).
func normalizeListing(s string) string {
	s = progComment.ReplaceAllString(s, "$1")
	return flagsLine.ReplaceAllString(s, "")
}
