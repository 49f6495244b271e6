package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/atomicfile"
	"github.com/wanpin/wanpin/pkg/rules"
	"golang.org/x/sys/unix"
)

// memoryKeeper is the part of the nftables table that a clean restart
// would otherwise lose: what its sticky and learned sets hold
// (rules.Memory).
type memoryKeeper interface {
	Memory() (rules.Memory, error)
	Seed(rules.Memory)
}

// maxMemoryFile bounds what loadMemory reads: rules.MemoryCap entries
// written down take about 30 MB.
const maxMemoryFile = 64 << 20

// runtimeFile is RuntimeDir/<name>-<netns inode>.json: one per network
// namespace, since a daemon runs per namespace and /run is shared.
func (d *Daemon) runtimeFile(name string) string {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err == nil {
		name = fmt.Sprintf("%s-%d", name, st.Ino)
	}
	return filepath.Join(d.opts.RuntimeDir, name+".json")
}

// memoryPath is RuntimeDir/memory-<netns cookie>.json. Not the
// namespace's inode number (runtimeFile): a memory goes into the table,
// and the inode of a namespace deleted (a lab's, a container's) is
// reused by a later one, which would then start with another
// namespace's sticky sources and learned addresses. The cookie
// (SO_NETNS_COOKIE) is never reused while the kernel runs.
func (d *Daemon) memoryPath() string {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		defer unix.Close(fd)
		var cookie uint64
		if cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err == nil {
			return filepath.Join(d.opts.RuntimeDir, fmt.Sprintf("memory-%d.json", cookie))
		}
	}
	return d.runtimeFile("memory")
}

// saveMemory writes down the sticky and learned entries before a clean
// stop removes the table (teardown). /run is a tmpfs: a reboot, which
// empties the clients' DNS caches too, forgets them.
func (d *Daemon) saveMemory() {
	mk, ok := d.nft.(memoryKeeper)
	if !ok {
		return
	}
	path := d.memoryPath()
	mem, err := mk.Memory()
	if err == nil && mem.Len() == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("removing the last run's sticky and learned entries", "file", path, "err", err)
		}
		return
	}
	if err == nil {
		var b []byte
		if b, err = json.Marshal(mem); err == nil {
			if err = os.MkdirAll(d.opts.RuntimeDir, 0o755); err == nil {
				err = atomicfile.Write(path, b, 0o600)
			}
		}
	}
	if err != nil {
		d.log.Warn("sticky sources and learned addresses not kept for the next start", "err", err)
		return
	}
	d.log.Info("sticky sources and learned addresses kept for the next start", "entries", mem.Len(), "file", path)
}

// loadMemory hands what the last clean stop wrote down to the first
// apply, once: the file is removed as it is read, so a memory is never
// used twice (a start that fails before its first apply loses it, not
// the start).
func (d *Daemon) loadMemory() {
	mk, ok := d.nft.(memoryKeeper)
	if !ok {
		return
	}
	path := d.memoryPath()
	f, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("reading the last run's sticky and learned entries", "file", path, "err", err)
		}
		return
	}
	defer f.Close()
	os.Remove(path)
	var mem rules.Memory
	if err := json.NewDecoder(io.LimitReader(f, maxMemoryFile)).Decode(&mem); err != nil {
		d.log.Warn("the last run's sticky and learned entries are unreadable, starting without them", "file", path, "err", err)
		return
	}
	mk.Seed(mem)
	d.log.Info("sticky sources and learned addresses of the last run", "entries", mem.Len(),
		"away_ms", time.Since(mem.Taken).Milliseconds())
}
