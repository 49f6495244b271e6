package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestHooksRunWithEnvironmentAndNeverBlock(t *testing.T) {
	needRoot(t) // hooks of any other user's do not run
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	os.WriteFile(filepath.Join(dir, "10-record"), []byte("#!/bin/sh\necho \"$WANPIN_UPLINK $WANPIN_INTERFACE $WANPIN_STATE $WANPIN_REASON\" >> "+out+"\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "20-slow"), []byte("#!/bin/sh\nsleep 2\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "not-executable"), []byte("#!/bin/sh\nexit 1\n"), 0o644)
	h := newHookRunner(dir, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	start := time.Now()
	h.transition("dsl", "ppp0", "down", "3 rounds lost")
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("transition blocked for %v", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(out)
		if strings.TrimSpace(string(b)) == "dsl ppp0 down 3 rounds lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hook output %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The slow hook holds a slot; enough transitions fill them and the
	// next is skipped, not queued.
	for i := 0; i < maxHookRuns+2; i++ {
		h.transition("dsl", "ppp0", "up", "ok")
	}
	if len(h.slot) != maxHookRuns {
		t.Errorf("%d hook runs in flight, want the bound %d", len(h.slot), maxHookRuns)
	}
}

// The hook tests make files of other owners with os.Chown: root only.
// An unprivileged user is a uid without a passwd entry.
const otherUID = 4242

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the hooks are owned by root and by another uid")
	}
}

// logBuffer collects a logger's lines; hooks log from their goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the logged lines that contain every one of subs.
func (b *logBuffer) lines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		all := l != ""
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}

func newTestRunner(t *testing.T, dir string) (*hookRunner, *logBuffer) {
	logs := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	return newHookRunner(dir, slog.New(slog.NewTextHandler(logs, nil))), logs
}

// transitionAndWait runs one transition's hooks and waits until they are
// done (their slot is given back).
func transitionAndWait(t *testing.T, h *hookRunner, reason string) {
	t.Helper()
	h.transition("dsl", "ppp0", "down", reason)
	deadline := time.Now().Add(10 * time.Second)
	for len(h.slot) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("hooks still running after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// file writes a file of that mode and owner (chmod after the write: the
// umask must not decide).
func file(t *testing.T, path, content string, mode os.FileMode, uid, gid int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// mkdir makes a directory of that mode, as chmod(1) writes it (0o1777 is
// sticky: os.Chmod would want os.ModeSticky), and owner.
func mkdir(t *testing.T, path string, mode uint32, uid int) {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// marker is a hook that records that it ran, in the directory marks,
// under name.
func marker(marks, name string) string {
	return fmt.Sprintf("#!/bin/sh\ntouch %s/%s\n", marks, name)
}

// ran lists the markers in marks.
func ran(t *testing.T, marks string) []string {
	t.Helper()
	entries, err := os.ReadDir(marks)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// Every way the attack review had a hook run as root that someone else
// could have written, and the names run-parts would not run: each skipped
// with one log line saying why, however many transitions there are; the
// safe hooks run, in name order, a symlink's safe target among them.
func TestHooksRunOnlyWhatOnlyRootCouldWrite(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	hooks, lib, open, marks := filepath.Join(root, "hooks.d"), filepath.Join(root, "lib"), filepath.Join(root, "open"), filepath.Join(root, "marks")
	mkdir(t, hooks, 0o755, 0)
	mkdir(t, lib, 0o755, 0)
	mkdir(t, open, 0o777, 0) // not sticky: anyone may replace its files
	mkdir(t, marks, 0o755, 0)

	safe := func(name string) string { return marker(marks, name) }
	file(t, filepath.Join(hooks, "10-safe"), safe("10-safe"), 0o755, 0, 0)
	file(t, filepath.Join(hooks, "11-group-owned-read-only"), safe("11-group-owned-read-only"), 0o750, 0, otherUID)
	file(t, filepath.Join(hooks, "20-world-writable"), safe("20-world-writable"), 0o777, 0, 0)
	file(t, filepath.Join(hooks, "21-group-writable"), safe("21-group-writable"), 0o775, 0, 0)
	file(t, filepath.Join(hooks, "30-user-owned"), safe("30-user-owned"), 0o755, otherUID, otherUID)
	for _, name := range []string{"40-old.dpkg-old", "41-new.dpkg-dist", "42-edited~", ".43-hidden", "44-script.sh"} {
		file(t, filepath.Join(hooks, name), safe(name), 0o755, 0, 0)
	}
	file(t, filepath.Join(lib, "target"), safe("50-link"), 0o755, 0, 0)
	file(t, filepath.Join(lib, "user-target"), safe("51-link-to-user-owned"), 0o755, otherUID, otherUID)
	file(t, filepath.Join(open, "target"), safe("52-link-into-open-dir"), 0o755, 0, 0)
	links := map[string]string{
		"50-link":                filepath.Join(lib, "target"),
		"51-link-to-user-owned":  filepath.Join(lib, "user-target"),
		"52-link-into-open-dir":  filepath.Join(open, "target"),
		"53-dangling":            filepath.Join(root, "nothing"),
		"54-link-to-a-directory": lib,
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(hooks, name)); err != nil {
			t.Fatal(err)
		}
	}
	mkdir(t, filepath.Join(hooks, "60-directory"), 0o755, 0)
	file(t, filepath.Join(hooks, "70-disabled"), safe("70-disabled"), 0o644, 0, 0)

	h, logs := newTestRunner(t, hooks)
	for range 3 {
		transitionAndWait(t, h, "3 rounds lost")
	}
	if got, want := ran(t, marks), []string{"10-safe", "11-group-owned-read-only", "50-link"}; !slices.Equal(got, want) {
		t.Errorf("ran %v, want %v", got, want)
	}
	for _, c := range []struct{ name, level, why string }{
		{"20-world-writable", "WARN", "writable by group or others (mode 0777)"},
		{"21-group-writable", "WARN", "writable by group or others (mode 0775)"},
		{"30-user-owned", "WARN", "owned by uid 4242, not root"},
		{"40-old.dpkg-old", "INFO", "name not of letters"},
		{"41-new.dpkg-dist", "INFO", "name not of letters"},
		{"42-edited~", "INFO", "name not of letters"},
		{".43-hidden", "INFO", "name not of letters"},
		{"44-script.sh", "INFO", "name not of letters"},
		{"51-link-to-user-owned", "WARN", "symlink to " + filepath.Join(lib, "user-target") + ", which is owned by uid 4242"},
		{"52-link-into-open-dir", "WARN", "symlink to " + filepath.Join(open, "target") + ", whose directory is writable by group or others (mode 0777)"},
		{"53-dangling", "WARN", "symlink that does not resolve"},
		{"54-link-to-a-directory", "INFO", "which is not a regular file"},
		{"60-directory", "INFO", "not a regular file"},
		{"70-disabled", "INFO", "not executable"},
	} {
		got := logs.lines("transition hook skipped", "hook="+filepath.Join(hooks, c.name)+" ")
		if len(got) != 1 || !strings.Contains(got[0], "level="+c.level) || !strings.Contains(got[0], c.why) {
			t.Errorf("%s: logged %d times over 3 transitions, want once at %s with %q:\n%s", c.name, len(got), c.level, c.why, strings.Join(got, "\n"))
		}
	}
	if got := logs.lines("transition hook skipped"); len(got) != 14 {
		t.Errorf("%d skip lines, want 14:\n%s", len(got), strings.Join(got, "\n"))
	}

	// Made safe, it runs and the next skip is reported afresh; the
	// others stay reported.
	os.Chmod(filepath.Join(hooks, "20-world-writable"), 0o755)
	transitionAndWait(t, h, "ok")
	if !slices.Contains(ran(t, marks), "20-world-writable") {
		t.Error("20-world-writable did not run once 0755")
	}
	os.Chmod(filepath.Join(hooks, "20-world-writable"), 0o757)
	transitionAndWait(t, h, "ok")
	transitionAndWait(t, h, "ok")
	if got := logs.lines("transition hook skipped", "20-world-writable", "mode 0757"); len(got) != 1 {
		t.Errorf("world-writable again: logged %d times, want once", len(got))
	}
	if got := logs.lines("transition hook skipped"); len(got) != 15 {
		t.Errorf("%d skip lines, want 15:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// A hooks directory someone else could write, or below one, runs nothing
// (not even root's own hooks in it: whoever can write the directory could
// have replaced them), and says so once. A sticky directory above it, as
// /tmp, is fine: nobody but root may rename or remove root's entries in
// it. The hooks directory itself may be a symlink to a safe one.
func TestHooksDirectoryOnlyRootCouldWrite(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string) (hooks string)
		why   string // "": the hooks run
	}{
		{"world-writable sticky (1777)", func(t *testing.T, root string) string {
			hooks := filepath.Join(root, "hooks.d")
			mkdir(t, hooks, 0o1777, 0)
			return hooks
		}, "hooks directory is writable by group or others (mode 1777)"},
		{"group-writable", func(t *testing.T, root string) string {
			hooks := filepath.Join(root, "hooks.d")
			mkdir(t, hooks, 0o775, 0)
			return hooks
		}, "hooks directory is writable by group or others (mode 0775)"},
		{"owned by a user", func(t *testing.T, root string) string {
			hooks := filepath.Join(root, "hooks.d")
			mkdir(t, hooks, 0o755, otherUID)
			return hooks
		}, "hooks directory is owned by uid 4242, not root"},
		{"below a world-writable directory", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "etc"), 0o777, 0)
			hooks := filepath.Join(root, "etc", "hooks.d")
			mkdir(t, hooks, 0o755, 0)
			return hooks
		}, "hooks directory is below ROOT/etc, writable by group or others (mode 0777)"},
		{"below a user's directory", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "home"), 0o755, otherUID)
			hooks := filepath.Join(root, "home", "hooks.d")
			mkdir(t, hooks, 0o755, 0)
			return hooks
		}, "hooks directory is below ROOT/home, owned by uid 4242, not root"},
		{"below a sticky world-writable directory", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "tmp"), 0o1777, 0)
			hooks := filepath.Join(root, "tmp", "hooks.d")
			mkdir(t, hooks, 0o755, 0)
			return hooks
		}, ""},
		{"a symlink to a safe directory", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "real"), 0o755, 0)
			hooks := filepath.Join(root, "hooks.d")
			if err := os.Symlink(filepath.Join(root, "real"), hooks); err != nil {
				t.Fatal(err)
			}
			return hooks
		}, ""},
		{"a symlink to a world-writable directory", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "real"), 0o777, 0)
			hooks := filepath.Join(root, "hooks.d")
			if err := os.Symlink(filepath.Join(root, "real"), hooks); err != nil {
				t.Fatal(err)
			}
			return hooks
		}, "hooks directory is writable by group or others (mode 0777)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			marks := filepath.Join(root, "marks")
			mkdir(t, marks, 0o755, 0)
			hooks := c.setup(t, root)
			file(t, filepath.Join(hooks, "10-root"), marker(marks, "10-root"), 0o755, 0, 0)
			// What the unprivileged user dropped in, where it could.
			file(t, filepath.Join(hooks, "20-dropped"), marker(marks, "20-dropped"), 0o755, otherUID, otherUID)
			h, logs := newTestRunner(t, hooks)
			transitionAndWait(t, h, "x")
			transitionAndWait(t, h, "x")
			got := ran(t, marks)
			if c.why == "" {
				if !slices.Equal(got, []string{"10-root"}) {
					t.Errorf("ran %v, want [10-root]", got)
				}
				return
			}
			if len(got) != 0 {
				t.Errorf("ran %v, want nothing", got)
			}
			why := strings.ReplaceAll(c.why, "ROOT", root)
			lines := logs.lines("transition hooks skipped", "hook="+hooks+" ")
			if len(lines) != 1 || !strings.Contains(lines[0], why) || !strings.Contains(lines[0], "level=WARN") {
				t.Errorf("logged %d times over 2 transitions, want one warning with %q:\n%s", len(lines), why, logs)
			}
		})
	}
}

// A hook that dumps its environment sees the documented variables and
// nothing of the daemon's: not the systemd notify socket and watchdog a
// hook could lie to, not the bus, not the unit's invocation id. It runs
// in /. The shell adds PWD itself: /proc/PID/environ shows what the
// daemon passed, env what a hook's commands see.
func TestHookEnvironmentIsMinimal(t *testing.T) {
	needRoot(t)
	for k, v := range map[string]string{
		"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1",
		"INVOCATION_ID": "0123456789abcdef", "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/run/dbus/system_bus_socket",
		"JOURNAL_STREAM": "8:1234", "HOME": "/root", "LANG": "de_DE.UTF-8", "PATH": "/opt/evil/bin:/usr/bin",
	} {
		t.Setenv(k, v)
	}
	root := t.TempDir()
	hooks, outDir := filepath.Join(root, "hooks.d"), filepath.Join(root, "out")
	mkdir(t, hooks, 0o755, 0)
	mkdir(t, outDir, 0o755, 0)
	file(t, filepath.Join(hooks, "10-env"), fmt.Sprintf(`#!/bin/sh
tr '\0' '\n' < /proc/$$/environ > %[1]s/environ
env > %[1]s/env
pwd > %[1]s/pwd
`, outDir), 0o755, 0, 0)
	h, _ := newTestRunner(t, hooks)
	transitionAndWait(t, h, "3 rounds lost: 203.0.113.1 timeout")

	want := []string{
		"LANG=C",
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"WANPIN_INTERFACE=ppp0",
		"WANPIN_REASON=3 rounds lost: 203.0.113.1 timeout",
		"WANPIN_STATE=down",
		"WANPIN_UPLINK=dsl",
	}
	read := func(name string) []string {
		b, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		slices.Sort(lines)
		return lines
	}
	if got := read("environ"); !slices.Equal(got, want) {
		t.Errorf("environment passed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	env := slices.DeleteFunc(read("env"), func(s string) bool { return s == "PWD=/" })
	if !slices.Equal(env, want) {
		t.Errorf("env in the hook (PWD=/ aside):\n%s\nwant:\n%s", strings.Join(env, "\n"), strings.Join(want, "\n"))
	}
	if got := read("pwd"); !slices.Equal(got, []string{"/"}) {
		t.Errorf("working directory %v, want /", got)
	}
}

// A reason with shell syntax, terminal escapes, a forged line and 10 KB
// of junk (what a probe target could have put there before pkg/health
// kept its bytes out) arrives printable and bounded; so does an
// interface name that is not one.
func TestHookValuesPrintableAndBounded(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	hooks, outDir := filepath.Join(root, "hooks.d"), filepath.Join(root, "out")
	mkdir(t, hooks, 0o755, 0)
	mkdir(t, outDir, 0o755, 0)
	file(t, filepath.Join(hooks, "10-values"), fmt.Sprintf(`#!/bin/sh
printf '%%s' "$WANPIN_REASON" > %[1]s/reason
printf '%%s' "$WANPIN_INTERFACE" > %[1]s/interface
`, outDir), 0o755, 0, 0)
	h, _ := newTestRunner(t, hooks)
	reason := "health probes: 2 rounds lost: 203.0.113.1 $(touch " + root + "/pwned); `id` \x1b[2J\x1b]0;title\x07\nlevel=ERROR msg=forged " +
		strings.Repeat("\x00\xff\u202e junk ", 10<<10/10)
	h.transition("dsl", "ppp0\x1b[31m"+strings.Repeat("x", 200), "down", reason)
	deadline := time.Now().Add(10 * time.Second)
	for len(h.slot) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	check := func(name string, max int, prefix string) {
		b, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil {
			t.Fatal(err)
		}
		got := string(b)
		if len(got) > max {
			t.Errorf("%s: %d bytes, want at most %d", name, len(got), max)
		}
		for i := 0; i < len(got); i++ {
			if got[i] < ' ' || got[i] > '~' {
				t.Errorf("%s: byte %#x at %d: %q", name, got[i], i, got)
				break
			}
		}
		if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, "...") {
			t.Errorf("%s: %q, want it to start %q and end in ...", name, got, prefix)
		}
	}
	check("reason", hookReasonMax, "health probes: 2 rounds lost: 203.0.113.1 $(touch "+root+"/pwned); `id` ?[2J?]0;title??level=ERROR msg=forged ??? junk")
	check("interface", hookNameMax, "ppp0?[31mxxx")
	if _, err := os.Stat(filepath.Join(root, "pwned")); err == nil {
		t.Error("the reason's command substitution ran")
	}
}

// The capture keeps its bound whatever is written to it, counts it all,
// and never fails a write (a failed write would stop exec draining the
// pipe, and the hook would block on it).
func TestHookOutputBuffer(t *testing.T) {
	o := &hookOutput{max: hookOutputKept}
	chunk := bytes.Repeat([]byte("0123456789abcde\n"), 4096) // 64 KiB
	for range 300 << 20 / len(chunk) {
		if n, err := o.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	if o.total != 300<<20 || len(o.head) != hookOutputKept || cap(o.head) != hookOutputKept {
		t.Errorf("total %d, kept %d (cap %d): want %d, %d, %d", o.total, len(o.head), cap(o.head), 300<<20, hookOutputKept, hookOutputKept)
	}
	if s := o.summary(hookOutputLogged); len(s) > hookOutputLogged || !strings.HasPrefix(s, "0123456789abcde | 0123456789abcde | ") {
		t.Errorf("summary %q (%d bytes)", s, len(s))
	}

	o = &hookOutput{max: hookOutputKept}
	o.Write([]byte("\n  first line\r\n\n\x1b[31mred\x1b[0m\tand tabs\n"))
	if s := o.summary(hookOutputLogged); s != "first line | ?[31mred?[0m?and tabs" {
		t.Errorf("summary %q", s)
	}
}

// A hook printing 64 MB costs the daemon no more memory than the bound
// (CombinedOutput allocated all of it), and its summary is one line; a
// failing hook's long output too.
func TestHookLoudOutputBounded(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	hooks := filepath.Join(root, "hooks.d")
	mkdir(t, hooks, 0o755, 0)
	file(t, filepath.Join(hooks, "10-loud"), "#!/bin/sh\nyes 'hook output line' | head -c 67108864\n", 0o755, 0, 0)
	file(t, filepath.Join(hooks, "20-failing"), "#!/bin/sh\necho 'cannot reach 192.0.2.1'\nseq 1 100000 >&2\nexit 3\n", 0o755, 0, 0)
	h, logs := newTestRunner(t, hooks)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	transitionAndWait(t, h, "x")
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("running the hooks allocated %d bytes, want under 4 MiB", alloc)
	} else {
		t.Logf("64 MB of output: %d bytes allocated", alloc)
	}

	loud := logs.lines("transition hook ran", "10-loud")
	if len(loud) != 1 || !strings.Contains(loud[0], "output_bytes=67108864 ") ||
		!strings.Contains(loud[0], `output="hook output line | hook output line | `) {
		t.Errorf("loud hook's summary:\n%s", strings.Join(loud, "\n"))
	}
	failing := logs.lines("transition hook failed", "20-failing")
	if len(failing) != 1 || !strings.Contains(failing[0], "level=WARN") || !strings.Contains(failing[0], `err="exit status 3"`) ||
		!strings.Contains(failing[0], `output="cannot reach 192.0.2.1 | 1 | 2 | 3 | `) ||
		!strings.Contains(failing[0], "output_bytes="+strconv.Itoa(len("cannot reach 192.0.2.1\n")+588895)+" ") {
		t.Errorf("failing hook's summary:\n%s", strings.Join(failing, "\n"))
	}
	for _, l := range append(loud, failing...) {
		if len(l) > 1024 {
			t.Errorf("summary line of %d bytes", len(l))
		}
	}
}

// A hook that hangs is killed at the timeout, with what it started in the
// background (its process group), and the run is logged as killed.
func TestHookTimeoutKillsItsProcessGroup(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	hooks, outDir := filepath.Join(root, "hooks.d"), filepath.Join(root, "out")
	mkdir(t, hooks, 0o755, 0)
	mkdir(t, outDir, 0o755, 0)
	file(t, filepath.Join(hooks, "10-hang"), fmt.Sprintf("#!/bin/sh\nsleep 60 &\necho $! > %s/bg\nsleep 60\n", outDir), 0o755, 0, 0)
	h, logs := newTestRunner(t, hooks)
	h.timeout = 300 * time.Millisecond
	start := time.Now()
	transitionAndWait(t, h, "x")
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the hanging hook took %v, want about %v", took, h.timeout)
	}
	if got := logs.lines("transition hook failed", "killed after 300ms"); len(got) != 1 {
		t.Errorf("want one line saying the hook was killed:\n%s", logs)
	}
	b, err := os.ReadFile(filepath.Join(outDir, "bg"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Gone, or a zombie waiting for init: killed either way.
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background sleep %s still running: %s", pid, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
