package cgroups

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestMountPoint(t *testing.T) {
	dir := t.TempDir()
	hybrid := filepath.Join(dir, "mountinfo")
	os.WriteFile(hybrid, []byte("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"+
		"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0o644)
	if got, _ := mountPoint(hybrid); got != "/sys/fs/cgroup/unified" {
		t.Errorf("hybrid: got %q", got)
	}
	unified := filepath.Join(dir, "mountinfo2")
	os.WriteFile(unified, []byte("36 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"), 0o644)
	if got, _ := mountPoint(unified); got != "/sys/fs/cgroup" {
		t.Errorf("unified: got %q", got)
	}
}

func TestResolveInFakeTree(t *testing.T) {
	root := t.TempDir()
	unit := filepath.Join(root, "system.slice", "transmission-daemon.service")
	other := filepath.Join(root, "user.slice", "user-1000.slice", "app.scope")
	for _, d := range []string{unit, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := &Resolver{Root: root}
	for svc, dir := range map[string]string{
		"transmission-daemon.service":           unit,
		"app.scope":                             other,
		"/user.slice/user-1000.slice/app.scope": other,
	} {
		m, err := r.Resolve(svc)
		if err != nil || len(m) != 1 {
			t.Fatalf("%s: %v %v", svc, m, err)
		}
		st, _ := os.Stat(dir)
		ino := st.Sys().(*syscall.Stat_t).Ino
		if m[0].ID != ino {
			t.Errorf("%s: id %d, want inode %d", svc, m[0].ID, ino)
		}
	}
	if m, _ := r.Resolve("transmission-daemon.service"); m[0].Level != 2 {
		t.Errorf("level %d, want 2", m[0].Level)
	}
	if m, _ := r.Resolve("app.scope"); m[0].Level != 3 {
		t.Errorf("level %d, want 3", m[0].Level)
	}
	if m, err := r.Resolve("absent.service"); m != nil || err != nil {
		t.Errorf("absent unit: %v %v", m, err)
	}
}
