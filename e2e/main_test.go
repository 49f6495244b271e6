// Package e2e runs wanpin in a small internet built in network namespaces
// (internal/lab) and checks what the server sees. Root only.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// wanpinBin is the binary under test, built once by TestMain.
var wanpinBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, needs root")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "wanpin-e2e-")
	if err != nil {
		panic(err)
	}
	wanpinBin = filepath.Join(dir, "wanpin")
	build := exec.Command("go", "build", "-o", wanpinBin, "../cmd/wanpin")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building wanpin:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
