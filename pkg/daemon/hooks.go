package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/untrusted"
	"github.com/wanpin/wanpin/pkg/ifname"
)

// Transition hooks run as root. An attack review (issue 13) found hooks
// that any local user could write running as uid 0, hooks inheriting the
// daemon's whole environment, a hook's 300 MB of output growing the daemon
// to 1.07 GB, and a probe target's bytes in WANPIN_REASON. Hence the rules
// here:
//
//   - a hook runs only if nobody but root could have written it: a regular
//     file owned by root and not writable by group or others, in a hooks
//     directory with the same properties, below directories that are
//     root's and not writable by others (or sticky, like /tmp, where nobody
//     can rename or remove root's entries). Whoever can write any of them
//     can replace what lies below. A symlink is followed when its target
//     and every directory on the target's path pass the same checks, and
//     the checked target is what runs, so a link changed after the check
//     cannot redirect the run. Followed rather than skipped: a link made
//     by root to a file only root can change is as safe as the file, and
//     linking a hook shipped elsewhere (/usr/share, /usr/local) into
//     hooks.d is the usual way to enable it.
//   - only names run-parts accepts (^[a-zA-Z0-9_-]+$): no dots, so
//     *.dpkg-old, *.dpkg-dist, *~ and hidden files, which dpkg and editors
//     leave behind, do not run.
//   - every hook or directory skipped is logged once, with why; again only
//     when its mode, owner, mtime or the reason change.
//   - the environment is hookEnv's and nothing else: not NOTIFY_SOCKET
//     (a hook could tell systemd the daemon is ready or stopping), not the
//     watchdog's variables, not D-Bus addresses or INVOCATION_ID.
//   - the output is drained to the end (a hook must never block on a full
//     pipe) but only its first hookOutputKept bytes are kept; a one-line
//     summary is logged.
//   - values that come from outside are sanitised (see hookEnv).

// HookTimeout bounds one transition hook: a hook that hangs is killed,
// with whatever it started in its process group.
const HookTimeout = 10 * time.Second

// maxHookRuns bounds how many transitions' hooks may run at once; when
// more pile up (a flapping link), the oldest are not waited for and new
// ones are skipped with a log line rather than queued without end.
const maxHookRuns = 4

const (
	// hookOutputKept is what is kept of a hook's stdout and stderr
	// together; the rest is read, counted and dropped.
	hookOutputKept = 4 << 10
	// hookOutputLogged is how much of that the summary line shows.
	hookOutputLogged = 512
	// hookReasonMax bounds WANPIN_REASON. Reasons carry probe results
	// for both families; 512 bytes holds a few targets' each.
	hookReasonMax = 512
	// hookNameMax bounds WANPIN_UPLINK and WANPIN_INTERFACE; valid names
	// are far shorter (interfaces: ifname.Size-1 bytes).
	hookNameMax = 64
)

// hookPATH is the PATH of every hook: the system's directories only, so a
// hook never runs a binary from wherever the daemon's PATH pointed.
const hookPATH = "/usr/sbin:/usr/bin:/sbin:/bin"

// hookNameOK is Debian run-parts' default (--lsbsysinit off).
var hookNameOK = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// hookRunner runs the executables of a directory on every uplink
// transition, outside the loop, so a slow hook never delays routing.
type hookRunner struct {
	dir     string
	log     *slog.Logger
	slot    chan struct{}
	timeout time.Duration // HookTimeout; shorter in tests

	mu sync.Mutex
	// reported holds, per path skipped at the last scan, what it was when
	// it was reported (why, mode, owner, mtime): a skip is logged once,
	// not on every transition. Paths gone or fine are dropped, so it
	// holds no more than the directory does.
	reported map[string]string
}

func newHookRunner(dir string, log *slog.Logger) *hookRunner {
	return &hookRunner{dir: dir, log: log, slot: make(chan struct{}, maxHookRuns), timeout: HookTimeout,
		reported: map[string]string{}}
}

// transition starts the hooks for one transition, with the uplink, its
// interface, the new state and the reason in the environment (hookEnv).
func (h *hookRunner) transition(uplink, iface, state, reason string) {
	if h == nil || h.dir == "" {
		return
	}
	hooks := h.scan()
	if len(hooks) == 0 {
		return
	}
	select {
	case h.slot <- struct{}{}:
	default:
		h.log.Warn("transition hooks skipped: too many still running", "uplink", uplink, "state", state)
		return
	}
	env := hookEnv(uplink, iface, state, reason)
	go func() {
		defer func() { <-h.slot }()
		for _, hk := range hooks {
			h.run(hk, env, uplink, state)
		}
	}()
}

// hookEnv is the whole environment of a hook:
//
//	PATH=/usr/sbin:/usr/bin:/sbin:/bin
//	LANG=C                 messages untranslated, output parseable
//	WANPIN_UPLINK          the uplink's name (from the config)
//	WANPIN_INTERFACE       its interface
//	WANPIN_STATE           up or down
//	WANPIN_REASON          why, for people
//
// The values are untrusted: the reason can hold what a probe target
// answered and names come from outside the daemon too. Each is printable
// ASCII of bounded length (anything else replaced by '?', a cut value
// ending in "..."), but may still hold shell syntax: hooks must quote
// them ("$WANPIN_REASON") and never eval them. LANG=C rather than
// C.UTF-8: the values are ASCII, and C exists on every system.
func hookEnv(uplink, iface, state, reason string) []string {
	return []string{
		"PATH=" + hookPATH,
		"LANG=C",
		"WANPIN_UPLINK=" + untrusted.Text(uplink, hookNameMax),
		"WANPIN_INTERFACE=" + untrusted.Text(iface, max(hookNameMax, ifname.Size)),
		"WANPIN_STATE=" + untrusted.Text(state, hookNameMax),
		"WANPIN_REASON=" + untrusted.Text(reason, hookReasonMax),
	}
}

// scan lists the hooks to run, in name order, as the paths to execute
// (a symlink's checked target), and logs what it skips.
func (h *hookRunner) scan() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]string{}
	defer func() { h.reported = seen }()

	// Absolute, so that the directories above it are checked too.
	dir, err := filepath.Abs(h.dir)
	if err == nil {
		dir, err = filepath.EvalSymlinks(dir)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no hooks directory, no hooks: nothing to say
	}
	if err != nil {
		h.skipped(seen, slog.LevelWarn, "transition hooks skipped", h.dir, nil, fmt.Sprintf("resolving the hooks directory: %v", err))
		return nil
	}
	if fi, why := unsafeDir(dir, true); why != "" {
		h.skipped(seen, slog.LevelWarn, "transition hooks skipped", h.dir, fi, "hooks directory "+why)
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		h.skipped(seen, slog.LevelWarn, "transition hooks skipped", h.dir, nil, fmt.Sprintf("reading the hooks directory: %v", err))
		return nil
	}
	var hooks []string
	for _, e := range entries {
		path := filepath.Join(h.dir, e.Name())
		if !hookNameOK.MatchString(e.Name()) {
			h.skipped(seen, slog.LevelInfo, "transition hook skipped", path, nil,
				"name not of letters, digits, '_' and '-' only (as run-parts: no *.dpkg-old, *~ or hidden files)")
			continue
		}
		run, fi, level, why := checkHook(filepath.Join(dir, e.Name()))
		if why != "" {
			h.skipped(seen, level, "transition hook skipped", path, fi, why)
			continue
		}
		hooks = append(hooks, run)
	}
	// In name order (ReadDir sorts by bytes, as run-parts in the C
	// locale), whatever a symlink's target is called.
	return hooks
}

// skipped logs that path is not run, and why, unless the last scan
// reported the same.
func (h *hookRunner) skipped(seen map[string]string, level slog.Level, msg, path string, fi fs.FileInfo, why string) {
	key := why
	attrs := []any{"hook", path, "why", why}
	if fi != nil {
		uid, gid := owner(fi)
		key += fmt.Sprintf("|%v|%d:%d|%d", fi.Mode(), uid, gid, fi.ModTime().UnixNano())
		attrs = append(attrs, "mode", fmt.Sprintf("%04o", modeBits(fi)), "uid", uid, "gid", gid)
	}
	seen[path] = key
	if h.reported[path] == key {
		return
	}
	h.log.Log(context.Background(), level, msg, attrs...)
}

// checkHook tells what to execute for path (a name in the checked hooks
// directory) or why nothing, with how loud the skip should be: a hook
// someone else could have written is a warning, one that is disabled or
// not a file is information.
func checkHook(path string) (run string, fi fs.FileInfo, level slog.Level, why string) {
	fi, err := os.Lstat(path)
	if err != nil {
		return "", nil, slog.LevelWarn, fmt.Sprintf("cannot stat: %v", err)
	}
	run = path
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", fi, slog.LevelWarn, fmt.Sprintf("symlink that does not resolve: %v", err)
		}
		if dfi, why := unsafeDir(filepath.Dir(target), false); why != "" {
			return "", dfi, slog.LevelWarn, fmt.Sprintf("symlink to %s, whose directory %s", target, why)
		}
		if fi, err = os.Lstat(target); err != nil {
			return "", nil, slog.LevelWarn, fmt.Sprintf("symlink to %s: %v", target, err)
		}
		run = target
	}
	if why := unsafeFile(fi); why != "" {
		return "", fi, slog.LevelWarn, whyPrefix(run, path) + why
	}
	switch {
	case !fi.Mode().IsRegular():
		return "", fi, slog.LevelInfo, whyPrefix(run, path) + "not a regular file"
	case fi.Mode().Perm()&0o111 == 0:
		return "", fi, slog.LevelInfo, whyPrefix(run, path) + "not executable"
	}
	return run, fi, 0, ""
}

func whyPrefix(run, path string) string {
	if run == path {
		return ""
	}
	return "symlink to " + run + ", which is "
}

// unsafeFile tells why the hook fi could have been written by someone
// other than root, or "".
func unsafeFile(fi fs.FileInfo) string {
	if uid, _ := owner(fi); uid != 0 {
		return fmt.Sprintf("owned by uid %d, not root", uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Sprintf("writable by group or others (mode %04o)", modeBits(fi))
	}
	return ""
}

// unsafeDir tells why dir (resolved: no symlinks in it) or a directory
// above it could have been changed by someone other than root, or "",
// with the FileInfo of the one at fault. strict is for the hooks
// directory itself: there a sticky bit does not help, since anyone who may
// create entries may add a hook. Above it (or around a symlink's target)
// a sticky directory writable by others is accepted: nobody but root may
// rename or remove root's entries in it.
func unsafeDir(dir string, strict bool) (fs.FileInfo, string) {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Lstat(d)
		if err != nil {
			return nil, fmt.Sprintf("cannot be checked: %v", err)
		}
		below := ""
		if d != dir {
			below = "below " + d + ", "
		}
		uid, _ := owner(fi)
		switch {
		case !fi.IsDir():
			return fi, "is " + below + "not a directory"
		case uid != 0:
			return fi, fmt.Sprintf("is %sowned by uid %d, not root", below, uid)
		case fi.Mode().Perm()&0o022 != 0 && (fi.Mode()&fs.ModeSticky == 0 || d == dir && strict):
			return fi, fmt.Sprintf("is %swritable by group or others (mode %04o)", below, modeBits(fi))
		}
		if d == "/" || d == "." {
			return nil, ""
		}
	}
}

func owner(fi fs.FileInfo) (uid, gid uint32) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid, st.Gid
	}
	return ^uint32(0), ^uint32(0) // unknown: not root
}

// modeBits is the mode as chmod writes it: permissions and the setuid,
// setgid and sticky bits.
func modeBits(fi fs.FileInfo) uint32 {
	m := uint32(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// run runs one hook to its end or the timeout and logs a one-line summary.
func (h *hookRunner) run(path string, env []string, uplink, state string) {
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = env
	cmd.Dir = "/"
	out := &hookOutput{max: hookOutputKept}
	// The same writer for both: exec makes one pipe and one goroutine
	// that drains it, and the output keeps its order.
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, killed whole at the timeout: what a hook
	// started in the background would otherwise keep running, and keep
	// the pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				return os.ErrProcessDone
			}
			return fmt.Errorf("killing the hook's process group: %w", err)
		}
		return nil
	}
	// Wait gives up on the pipe this long after the hook exits, when
	// something it left behind still holds it.
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	attrs := []any{"hook", path, "uplink", uplink, "state", state, "took", took.Round(time.Millisecond),
		"output_bytes", out.total, "output", out.summary(hookOutputLogged)}
	if err == nil {
		h.log.Info("transition hook ran", attrs...)
		return
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %v: %w", h.timeout, err)
	}
	h.log.Warn("transition hook failed", append(attrs, "err", err)...)
}

// hookOutput keeps the first max bytes written to it and counts them all.
// Its Write never fails, so exec keeps draining the pipe and a hook never
// blocks on it, and it never holds more than max bytes whatever the hook
// prints (CombinedOutput held all of it: 300 MB of output grew the daemon
// to 1.07 GB). exec calls Write from one goroutine at a time when stdout
// and stderr are the same writer.
type hookOutput struct {
	max   int
	head  []byte
	total int64
}

func (o *hookOutput) Write(p []byte) (int, error) {
	o.total += int64(len(p))
	if room := o.max - len(o.head); room > 0 {
		if o.head == nil {
			// Allocated once, at its bound: append never grows it.
			o.head = make([]byte, 0, o.max)
		}
		o.head = append(o.head, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// summary is the kept output's first lines as one line of at most max
// printable bytes: lines joined by " | ", blank ones left out. It is what
// the hook printed, so it is sanitised like any text from outside.
func (o *hookOutput) summary(max int) string {
	var lines []string
	n := 0
	for line := range bytes.Lines(o.head) {
		s := strings.TrimSpace(string(line))
		if s == "" {
			continue
		}
		lines = append(lines, s)
		if n += len(s) + 3; n > max {
			break // the rest would be cut anyway
		}
	}
	return untrusted.Text(strings.Join(lines, " | "), max)
}
