// Package packaging holds what Debian installs besides the binary; its
// tests check those files the way systemd reads them.
package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitVerifies runs systemd-analyze verify on the unit. The binary
// path points at a stand-in (the test does not install wanpin) and the
// man pages it names are not installed here, so those two lines are
// adjusted in a copy; everything else is checked as shipped.
func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("needs systemd-analyze")
	}
	unit, err := os.ReadFile("wanpin.service")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(unit), "\n") {
		if strings.HasPrefix(l, "Documentation=") {
			continue
		}
		lines = append(lines, strings.ReplaceAll(l, "/usr/sbin/wanpin", "/bin/true"))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "wanpin.service")
	os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestNetworkdDropIn(t *testing.T) {
	b, err := os.ReadFile("networkd/wanpin.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[Network]", "ManageForeignRoutingPolicyRules=no", "ManageForeignRoutes=no"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("drop-in lacks %q", want)
		}
	}
}

// The quota counts are written under /var/lib/wanpin: ProtectSystem=strict
// makes /var read-only, so the unit must give the daemon that directory.
func TestUnitStateDirectory(t *testing.T) {
	unit, err := os.ReadFile("wanpin.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nProtectSystem=strict\n", "\nStateDirectory=wanpin\n", "--state-dir /var/lib/wanpin"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", strings.TrimSpace(want))
		}
	}
}
