package netlab

// A booted router: Debian 12 under systemd, in the lab's router namespace.
//
// systemd-nspawn boots a minimal Debian root inside the router's network
// namespace (--network-namespace-path), so that the booted system is the
// lab's router, with its uplinks and its LAN. The host's PID 1 is not
// systemd here: nspawn needs --register=no and --keep-unit. With an
// existing network namespace it must be given CAP_NET_ADMIN and
// CAP_NET_RAW explicitly, or every service in the container gets EPERM
// from netlink.
//
// The root file system (debootstrap --variant=minbase from Debian's
// packages, some 40 s) is built once per machine into DebianRootCache
// and never changed: each boot mounts an overlay on it whose upper layer
// lives in the lab's directory and goes with the lab.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DebianRootCache holds the booted router's root file systems, one per
// package list.
var DebianRootCache = "/var/cache/wanpin-lab"

// DebianMirror is where debootstrap takes Debian's packages.
var DebianMirror = "http://deb.debian.org/debian"

// bootPackages is what the booted router has beyond minbase: what a
// minimal Debian router running wanpin would have. Not procps (kill,
// ps): a minimal Debian lacks it, and the unit must not need it.
var bootPackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "conntrack", "isc-dhcp-client"}

// DebianRoot returns the cached root file system, building it when it is
// missing (under a lock: two runs on one machine build it once).
func DebianRoot() (string, error) {
	key := sha256.Sum256([]byte("bookworm minbase v1 " + strings.Join(bootPackages, ",")))
	dir := filepath.Join(DebianRootCache, fmt.Sprintf("bookworm-%x", key[:6]))
	done := filepath.Join(dir, ".wanpin-lab-complete")
	if _, err := os.Stat(done); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(DebianRootCache, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(done); err == nil {
		return dir, nil // another run built it meanwhile
	}
	tmp := dir + ".building"
	os.RemoveAll(tmp)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(bootPackages, ","),
		"bookworm", tmp, DebianMirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("debootstrap: %w: %s", err, lastLines(string(out), 20))
	}
	// The test user for unprivileged commands, written as adduser would
	// (minbase has no passwd package).
	if err := appendFile(filepath.Join(tmp, "etc/passwd"), "wptest:x:1500:1500:wanpin test user:/nonexistent:/bin/sh\n"); err != nil {
		return "", err
	}
	if err := appendFile(filepath.Join(tmp, "etc/group"), "wptest:x:1500:\n"); err != nil {
		return "", err
	}
	// No getty on a console nobody reads; no network configuration of
	// its own (the lab configured the router's interfaces).
	for _, unit := range []string{"console-getty.service", "getty@.service", "systemd-networkd.service", "systemd-resolved.service"} {
		os.Symlink("/dev/null", filepath.Join(tmp, "etc/systemd/system", unit))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".wanpin-lab-complete"), nil, 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(text)
	return err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Booted is the router namespace running a booted Debian.
type Booted struct {
	l      *Lab
	root   string // the overlay's mount point: the container's /
	nspawn *exec.Cmd
	done   chan struct{}
	leader int // the container's PID 1, as the host sees it
	log    string
}

// Boot boots Debian in the router namespace. Close (or the lab's Close)
// powers it off and removes its files.
func (l *Lab) Boot() (*Booted, error) {
	lower, err := DebianRoot()
	if err != nil {
		return nil, err
	}
	dir, err := l.workDir()
	if err != nil {
		return nil, err
	}
	bd := filepath.Join(dir, "boot")
	b := &Booted{l: l, root: filepath.Join(bd, "root"), log: filepath.Join(bd, "nspawn.log"), done: make(chan struct{})}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(bd, d), 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(bd, "upper"), filepath.Join(bd, "work"))
	if err := syscall.Mount("overlay", b.root, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mounting the booted router's root: %w", err)
	}
	l.cleanups = append(l.cleanups, b.Close)
	// The container's name is its host name: the lab's prefix.
	if err := os.WriteFile(filepath.Join(b.root, "etc/hostname"), []byte(l.Prefix+"\n"), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return nil, err
	}
	b.nspawn = exec.Command("systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
		"--directory="+b.root, "--machine="+l.Prefix, "--boot",
		"--network-namespace-path=/run/netns/"+l.Router,
		"--capability=CAP_NET_ADMIN,CAP_NET_RAW", "--console=passive")
	b.nspawn.Stdout, b.nspawn.Stderr = logf, logf
	b.nspawn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.nspawn.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("systemd-nspawn: %w", err)
	}
	go func() { b.nspawn.Wait(); logf.Close(); close(b.done) }()
	if err := b.waitBooted(60 * time.Second); err != nil {
		return nil, err
	}
	return b, nil
}

// waitBooted finds the container's PID 1 and waits until systemd says the
// system is running (or degraded: the failed units are in the error).
func (b *Booted) waitBooted(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for b.leader == 0 {
		if pid := containerInit(b.nspawn.Process.Pid); pid != 0 {
			b.leader = pid
			break
		}
		select {
		case <-b.done:
			return fmt.Errorf("systemd-nspawn exited: %s", b.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no container init after %v: %s", timeout, b.Log())
		}
	}
	for {
		out, _ := b.Exec("systemctl", "is-system-running", "--wait")
		switch state := strings.TrimSpace(out); state {
		case "running":
			return nil
		case "degraded":
			failed, _ := b.Exec("systemctl", "--failed", "--no-legend")
			return fmt.Errorf("the booted router is degraded: %s", failed)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not booted after %v (%q): %s", timeout, out, b.Log())
		}
		select {
		case <-b.done:
			return fmt.Errorf("systemd-nspawn exited: %s", b.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// containerInit is the descendant of pid named systemd: the container's
// PID 1 (nspawn forks it, through an intermediate child that may still
// be there for a moment).
func containerInit(pid int) int {
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p))
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(b)) {
				c, err := strconv.Atoi(f)
				if err != nil {
					continue
				}
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.TrimSpace(string(comm)) == "systemd" {
					return c
				}
				queue = append(queue, c)
			}
		}
	}
	return 0
}

// Root is the container's root directory as the host sees it.
func (b *Booted) Root() string { return b.root }

// Log is what systemd-nspawn printed.
func (b *Booted) Log() string {
	out, _ := os.ReadFile(b.log)
	return lastLines(string(out), 30)
}

// Exec runs a command inside the booted system, in all of its
// namespaces, as root, and returns its combined output.
func (b *Booted) Exec(args ...string) (string, error) {
	return b.ExecAs("", args...)
}

// ExecAs runs a command inside the booted system as user (empty: root).
func (b *Booted) ExecAs(user string, args ...string) (string, error) {
	full := []string{"-t", strconv.Itoa(b.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--"}
	if user != "" {
		full = append(full, "setpriv", "--reuid="+user, "--regid="+user, "--init-groups", "--reset-env", "--")
	}
	full = append(full, "env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C")
	full = append(full, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in the booted router: %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Close powers the booted system off (SIGKILL after 30 s) and removes its
// root's overlay. Safe to call more than once.
func (b *Booted) Close() error {
	if b.nspawn != nil && b.nspawn.Process != nil {
		select {
		case <-b.done:
		default:
			// nspawn turns SIGTERM into the container's clean poweroff.
			b.nspawn.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.done:
			case <-time.After(30 * time.Second):
				syscall.Kill(-b.nspawn.Process.Pid, syscall.SIGKILL)
				<-b.done
			}
		}
	}
	if err := syscall.Unmount(b.root, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		if err := syscall.Unmount(b.root, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting %s: %w", b.root, err)
		}
	}
	return nil
}

// sweepBooted stops what a dead lab's booted router left: the processes
// in its router namespace (nspawn's container) and the overlay of its
// root under the lab's directory.
func sweepBooted(prefix string, namespaces []string) {
	for _, ns := range namespaces {
		if !strings.HasSuffix(ns, "-router") {
			continue
		}
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "overlay" {
			continue
		}
		dir := f[1]
		if strings.HasPrefix(filepath.Base(filepath.Dir(filepath.Dir(dir))), prefix+"-") && strings.HasSuffix(dir, "/boot/root") {
			syscall.Unmount(dir, syscall.MNT_DETACH)
			os.RemoveAll(filepath.Dir(filepath.Dir(dir)))
		}
	}
}
