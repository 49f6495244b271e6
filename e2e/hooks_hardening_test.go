package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// hookOutputBytes is what the loud hook prints: the attack review's 300 MB
// (CombinedOutput held all of it: the daemon grew from 14 MB to 1.07 GB,
// 1.85 GB after two transitions).
const hookOutputBytes = 300 << 20

// procStatusKB reads a "Vm...:  N kB" field of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the daemon's status: %v", err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

var tookRE = regexp.MustCompile(`took=(\S+)`)

// TestHookOutputLeavesDaemonSmall: a hook printing 300 MB on each of two
// transitions (down, then up) leaves the daemon under 30 MB resident, at
// its peak too (VmHWM), and its output is one summary line; a hook next
// to it sees only the documented environment, though the daemon runs
// with DBUS_SYSTEM_BUS_ADDRESS set (the harness's private bus).
func TestHookOutputLeavesDaemonSmall(t *testing.T) {
	l := newLab(t, 2)
	root := t.TempDir() // root's, 0700, below /tmp: sticky, so accepted
	hooks, out := filepath.Join(root, "hooks.d"), filepath.Join(root, "out")
	for _, d := range []string{hooks, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, script string) {
		t.Helper()
		p := filepath.Join(hooks, name)
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o755); err != nil { // whatever the umask
			t.Fatal(err)
		}
	}
	write("10-loud", fmt.Sprintf("#!/bin/sh\nyes 'wanpin hook output, a line of it' | head -c %d\n", hookOutputBytes))
	write("20-env", fmt.Sprintf("#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ > %s/environ-$WANPIN_STATE\n", out))

	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1), "--hooks-dir", hooks)
	// nsenter and env exec, so the lab's process is the daemon itself.
	pid := d.proc.Pid()
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "wanpin" {
		t.Fatalf("pid %d is %q, not the daemon", pid, comm)
	}
	before := procStatusKB(t, pid, "VmRSS")

	for i, c := range []struct {
		up    bool
		state string
	}{{false, "down"}, {true, "up"}} {
		start := time.Now()
		if err := l.SetCarrier(2, c.up); err != nil {
			t.Fatal(err)
		}
		// Sample the resident size while the hook runs: VmHWM says the
		// peak as well, this says it was measured during the run.
		peak := 0
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(d.log(), "transition hook ran") < 2*(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("the hooks of the %s transition did not finish:\n%s", c.state, d.log())
			}
			peak = max(peak, procStatusKB(t, pid, "VmRSS"))
			time.Sleep(20 * time.Millisecond)
		}
		wall := time.Since(start)
		var loud string
		for _, line := range strings.Split(d.log(), "\n") {
			if strings.Contains(line, "transition hook ran") && strings.Contains(line, "10-loud") && strings.Contains(line, "state="+c.state) {
				loud = line
			}
		}
		if !strings.Contains(loud, fmt.Sprintf("output_bytes=%d ", hookOutputBytes)) ||
			!strings.Contains(loud, `output="wanpin hook output, a line of it | `) || len(loud) > 1024 {
			t.Errorf("%s: the loud hook's summary line (%d bytes): %.300s", c.state, len(loud), loud)
		}
		took := ""
		if m := tookRE.FindStringSubmatch(loud); m != nil {
			took = m[1]
		}
		rss, hwm := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")
		t.Logf("%s: 300 MiB of hook output in %s (transition to summary %v); VmRSS %d kB before, peak sampled %d kB, %d kB after; VmHWM %d kB",
			c.state, took, wall.Round(time.Millisecond), before, peak, rss, hwm)
		if rss > 30<<10 || hwm > 30<<10 || peak > 30<<10 {
			t.Errorf("%s: daemon resident %d kB (peak %d kB, sampled %d kB), want under 30 MB", c.state, rss, hwm, peak)
		}

		env, err := os.ReadFile(filepath.Join(out, "environ-"+c.state))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSpace(string(env)), "\n")
		slices.Sort(got)
		want := []string{"LANG=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "WANPIN_INTERFACE=wan2",
			"WANPIN_REASON=", "WANPIN_STATE=" + c.state, "WANPIN_UPLINK=isp2"}
		for j, w := range want {
			// The reason is the daemon's words: only its presence is the
			// environment's promise.
			if j < len(got) && strings.HasSuffix(w, "=") && strings.HasPrefix(got[j], w) {
				got[j] = w
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the hook's environment:\n%s\nwant:\n%s", c.state, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// hooksListenIn listens on addr inside the namespace ns, on a thread
// switched there and back (a socket keeps the namespace it was made in).
func hooksListenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := netlab.InNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestProbeAnswerNotInHookReason: the health probe target of uplink 2
// answers every GET with shell syntax, terminal escapes and 10 KB of junk
// in a header line (the attack review had such bytes arrive in
// WANPIN_REASON). The uplink goes down for it; the reason in the hook's
// environment and in the daemon's log says what went wrong in Go's words,
// none of the target's.
func TestProbeAnswerNotInHookReason(t *testing.T) {
	l := newLab(t, 2)
	root := t.TempDir()
	hooks, out := filepath.Join(root, "hooks.d"), filepath.Join(root, "out")
	for _, d := range []string{hooks, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hook := filepath.Join(hooks, "10-reason")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s' \"$WANPIN_REASON\" > %s/reason-$WANPIN_UPLINK-$WANPIN_STATE\n", out)
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(hook, 0o755)

	const port = "8099"
	junk := "\x1b]0;pwned\x07$(touch " + root + "/pwned); `id`: \x1b[2J" + strings.Repeat("\x00\xff\u202e junk", 10<<10/14)
	ln := hooksListenIn(t, l.Server, "0.0.0.0:"+port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 4096)
				c.Read(buf) // the GET
				c.Write([]byte("HTTP/1.1 200 OK\r\nServer: x\r\n" + junk + "\r\n\r\n"))
			}()
		}
	}()

	target := "http://" + netlab.ServerAddr4 + ":" + port + "/"
	d := startWanpin(t, l, fmt.Sprintf(`
[[uplink]]
name = "isp1"
interface = "wan1"

[[uplink]]
name = "isp2"
interface = "wan2"

[uplink.health]
method = "http"
targets = [%q]
`, target), "--hooks-dir", hooks)
	d.waitFor(`uplink down" uplink=isp2`, 1, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	var reason []byte
	for {
		var err error
		if reason, err = os.ReadFile(filepath.Join(out, "reason-isp2-down")); err == nil && strings.Contains(d.log(), "transition hook ran") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook did not run:\n%s", d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := "health probes: 2 rounds lost: " + target + " malformed MIME header line"
	if string(reason) != want {
		t.Errorf("WANPIN_REASON %q, want %q", reason, want)
	}
	var line string
	for _, l := range strings.Split(d.log(), "\n") {
		if strings.Contains(l, `uplink down" uplink=isp2`) {
			line = l
		}
	}
	if !strings.Contains(line, `reason="`+want+`"`) {
		t.Errorf("the daemon's log line: %s", line)
	}
	for _, bad := range []string{"$(", "`", "pwned", "x1b", "junk"} {
		if strings.Contains(d.log(), bad) {
			t.Errorf("the daemon's log carries %q of the target's answer", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "pwned")); err == nil {
		t.Error("the answer's command substitution ran")
	}
	t.Logf("WANPIN_REASON=%s", reason)
}
