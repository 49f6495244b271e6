package packaging

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDebInstallAndPurge builds the .deb, installs it with dpkg, checks
// every file is where Debian expects it and works, and purges it again,
// leaving nothing behind. It refuses to touch a machine where wanpin is
// already installed.
func TestDebInstallAndPurge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (dpkg -i)")
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg")
	}
	if exec.Command("dpkg", "-s", "wanpin").Run() == nil {
		t.Skip("wanpin is installed on this machine; not touching it")
	}
	out := t.TempDir()
	b, err := exec.Command("./deb/build.sh", "0.0.0~test", out).CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	deb := strings.TrimSpace(string(b))
	files := []string{
		"/usr/sbin/wanpin",
		"/lib/systemd/system/wanpin.service",
		"/usr/lib/systemd/networkd.conf.d/wanpin.conf",
		"/usr/share/dbus-1/system.d/org.wanpin.Wanpin1.conf",
		"/etc/ppp/ip-up.d/wanpin",
		"/etc/ppp/ip-down.d/wanpin",
		"/etc/dhcp/dhclient-exit-hooks.d/wanpin",
		"/usr/lib/dhcpcd/dhcpcd-hooks/90-wanpin",
		"/etc/NetworkManager/dispatcher.d/90-wanpin",
		"/etc/wanpin/wanpin.toml",
		"/usr/share/man/man8/wanpin.8.gz",
		"/usr/share/man/man5/wanpin.toml.5.gz",
		"/usr/share/bash-completion/completions/wanpin",
		"/usr/share/doc/wanpin/copyright",
		"/usr/share/doc/wanpin/NEWS.Debian.gz",
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			t.Skipf("%s exists already; not touching this machine", f)
		}
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "wanpin").Run() })
	if b, err := exec.Command("dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, b)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed package lacks %s", f)
		}
	}
	for _, f := range []string{"/usr/sbin/wanpin", "/etc/ppp/ip-up.d/wanpin", "/etc/ppp/ip-down.d/wanpin"} {
		if st, err := os.Stat(f); err == nil && st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", f)
		}
	}
	// The DHCP clients' hooks: as shipped, with the modes Debian's own
	// hooks in those directories have (sourced ones 0644, dispatcher
	// scripts 0755).
	for f, want := range map[string]struct {
		src  string
		mode os.FileMode
	}{
		"/etc/dhcp/dhclient-exit-hooks.d/wanpin":     {"../hooks/dhcp/dhclient-exit-hook", 0o644},
		"/usr/lib/dhcpcd/dhcpcd-hooks/90-wanpin":     {"../hooks/dhcp/dhcpcd-hook", 0o644},
		"/etc/NetworkManager/dispatcher.d/90-wanpin": {"../hooks/dhcp/nm-dispatcher", 0o755},
	} {
		st, err := os.Stat(f)
		if err != nil {
			continue // reported above
		}
		if st.Mode().Perm() != want.mode {
			t.Errorf("%s: mode %v, want %v", f, st.Mode().Perm(), want.mode)
		}
		got, _ := os.ReadFile(f)
		src, err := os.ReadFile(want.src)
		if err != nil || string(got) != string(src) {
			t.Errorf("%s is not %s (%v)", f, want.src, err)
		}
	}
	conffiles, _ := exec.Command("dpkg-query", "-W", "-f=${Conffiles}", "wanpin").Output()
	for _, f := range []string{"/etc/wanpin/wanpin.toml", "/etc/dhcp/dhclient-exit-hooks.d/wanpin", "/etc/NetworkManager/dispatcher.d/90-wanpin"} {
		if !strings.Contains(string(conffiles), f) {
			t.Errorf("%s is not a conffile: %s", f, conffiles)
		}
	}
	if suggests, _ := exec.Command("dpkg-query", "-W", "-f=${Suggests}", "wanpin").Output(); !strings.Contains(string(suggests), "isc-dhcp-client | dhcpcd") {
		t.Errorf("Suggests: %s", suggests)
	}
	if b, err := exec.Command("/usr/sbin/wanpin", "check").CombinedOutput(); err != nil {
		t.Errorf("wanpin check on the shipped file: %v\n%s", err, b)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		if b, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/wanpin.service").CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, b)
		}
	}
	if b, err := exec.Command("dpkg", "--purge", "wanpin").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, b)
	}
	for _, f := range append(files, "/etc/wanpin") {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left after purge", f)
		}
	}
}
