package netlab

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// fakeLab reserves a prefix as New does (lock file created and locked)
// and makes two of a lab's namespaces, with no process in them.
func fakeLab(t *testing.T) (prefix string, lock *os.File) {
	t.Helper()
	p, lock, err := newPrefix()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{p + "-router", p + "-srv"} {
		if err := sh("ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		lock.Close()
		os.Remove(lockPath(p))
		for _, ns := range []string{p + "-router", p + "-srv"} {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	return p, lock
}

// TestSweepKeepsLiveLab: a live lab whose server namespace has no
// process (its iperf3 gone, or a lab still being built) is not swept:
// the rule before the locks deleted it.
func TestSweepKeepsLiveLab(t *testing.T) {
	needRoot(t)
	l, err := New(Options{ISPs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.server.iperf.Close()
	if pids, _ := exec.Command("ip", "netns", "pids", l.Server).Output(); len(pids) != 0 {
		t.Fatalf("server namespace still has processes: %s", pids)
	}
	Sweep()
	for _, ns := range l.namespaces() {
		if !nsExists(ns) {
			t.Errorf("Sweep deleted %s of a live lab", ns)
		}
	}
	if _, err := os.Stat(lockPath(l.Prefix)); err != nil {
		t.Errorf("lock file: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockPath(l.Prefix)); !os.IsNotExist(err) {
		t.Errorf("lock file after Close: %v", err)
	}
}

// TestSweepDeletesDeadLab: once the process holding a lab's lock is
// gone (here: the lock file closed, as at a crash), Sweep deletes its
// namespaces and its lock file.
func TestSweepDeletesDeadLab(t *testing.T) {
	needRoot(t)
	p, lock := fakeLab(t)
	Sweep()
	if !nsExists(p + "-srv") {
		t.Fatal("Sweep deleted a lab whose lock is held")
	}
	lock.Close()
	Sweep()
	for _, ns := range []string{p + "-router", p + "-srv"} {
		if nsExists(ns) {
			t.Errorf("%s of a dead lab survived Sweep", ns)
		}
	}
	if _, err := os.Stat(lockPath(p)); !os.IsNotExist(err) {
		t.Errorf("lock file of a dead lab: %v", err)
	}
}

// TestSweepLockOfAnotherProcess: the lock held by another process (as
// another test run's) keeps the lab, and its death frees it.
func TestSweepLockOfAnotherProcess(t *testing.T) {
	needRoot(t)
	p, lock := fakeLab(t)
	lock.Close()
	// One process that holds the lock and nothing else does: the shell
	// takes it on fd 9 and becomes sleep, fd 9 still open.
	holder := exec.Command("sh", "-c", `exec 9<>"$0" && flock --exclusive 9 && exec sleep 60`, lockPath(p))
	if err := holder.Start(); err != nil {
		t.Skipf("flock(1): %v", err)
	}
	defer holder.Process.Kill()
	// Wait until the other process holds it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f, err := os.Open(lockPath(p))
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close() // releases it if taken
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("flock(1) never took the lock")
		}
	}
	Sweep()
	if !nsExists(p+"-router") || !nsExists(p+"-srv") {
		t.Fatal("Sweep deleted a lab whose lock another process holds")
	}
	holder.Process.Kill()
	holder.Wait()
	Sweep()
	if nsExists(p+"-router") || nsExists(p+"-srv") {
		t.Error("Sweep kept a lab whose holder died")
	}
}

// TestSweepLockless: namespaces of a lab without lock file (built before
// the locks) keep the old rule: swept when the server namespace has no
// process.
func TestSweepLockless(t *testing.T) {
	needRoot(t)
	p, lock := fakeLab(t)
	os.Remove(lockPath(p))
	lock.Close()
	Sweep()
	if nsExists(p + "-srv") {
		t.Error("a lockless lab without process survived Sweep")
	}
}

// TestNewSkipsTakenPrefix: a prefix whose lock file exists is never
// handed out again while the file exists.
func TestNewSkipsTakenPrefix(t *testing.T) {
	dir := t.TempDir()
	old := LockDir
	LockDir = dir
	defer func() { LockDir = old }()
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		p, f, err := newPrefix()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if seen[p] {
			t.Fatalf("prefix %s handed out twice", p)
		}
		seen[p] = true
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatalf("own lock: %v", err)
		}
		g, err := os.Open(lockPath(p))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(g.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			t.Errorf("lock of %s not held", p)
		}
		g.Close()
	}
}
