package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// wanpin exec --mptcp runs the command under mptcpize (here a stand-in
// that shows how it was called), and says what to install without it.
func TestExecMPTCPWrapper(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"mptcpize $*\"\n"
	if err := os.WriteFile(filepath.Join(dir, "mptcpize"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wanpinBin, "exec", "--mptcp", "--", "echo", "hi")
	cmd.Env = append(os.Environ(), "PATH="+dir+":/usr/bin:/bin")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "mptcpize run echo hi" {
		t.Errorf("wanpin exec --mptcp: %v: %q", err, out)
	}
	cmd = exec.Command(wanpinBin, "exec", "--mptcp", "--", "echo", "hi")
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 127 || !strings.Contains(string(out), "apt install mptcpd") {
		t.Errorf("without mptcpize: %v: %q", err, out)
	}
	cmd = exec.Command(wanpinBin, "exec", "--", "echo", "hi")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "usage: wanpin exec --uplink NAME [--mptcp]") {
		t.Errorf("neither --uplink nor --mptcp: %v: %q", err, out)
	}
}
