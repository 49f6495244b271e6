package quota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/wanpin/wanpin/internal/atomicfile"
)

// DefaultDir is where the daemon keeps its state (the unit's
// StateDirectory=wanpin).
const DefaultDir = "/var/lib/wanpin"

// FileName is the quota file's name in the state directory.
const FileName = "quota.json"

// format marks a file as wanpin's quota counts, in this layout: any
// other file found at the path is foreign and ignored.
const format = "wanpin-quota/1"

// MaxFileSize bounds what is read: a file of 64 uplinks is 10 KB.
const MaxFileSize = 1 << 20

// Usage is what is kept of one uplink's quota: the period its count
// belongs to (its start; a restart in a later period starts from zero)
// and the bytes counted in it, both ways.
type Usage struct {
	PeriodStart time.Time `json:"period_start"`
	Used        uint64    `json:"used_bytes"`
}

type file struct {
	Format  string           `json:"format"`
	Saved   time.Time        `json:"saved"`
	Uplinks map[string]Usage `json:"uplinks"`
}

// Load reads the counts kept in dir. A missing file is no counts and no
// error; a file that cannot be read, is not wanpin's, or is corrupt
// gives no counts and an error saying why, for the log: the daemon
// starts anyway, counting from zero.
func Load(dir string) (map[string]Usage, error) {
	path := filepath.Join(dir, FileName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, more than a quota file ever holds (%d)", path, st.Size(), MaxFileSize)
	}
	var fl file
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fl); err != nil {
		return nil, fmt.Errorf("%s: corrupt: %v", path, err)
	}
	if fl.Format != format {
		return nil, fmt.Errorf("%s: not a wanpin quota file (format %q, want %q)", path, fl.Format, format)
	}
	for name, u := range fl.Uplinks {
		if u.PeriodStart.IsZero() {
			return nil, fmt.Errorf("%s: uplink %q has no period_start", path, name)
		}
	}
	return fl.Uplinks, nil
}

// Save writes the counts to dir so that a crash at any moment leaves
// either the old file or the new one, whole: a temporary file in the
// same directory, synced, renamed over the old one, and the directory
// synced so that the rename itself survives a power cut.
func Save(dir string, uplinks map[string]Usage, now time.Time) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(file{Format: format, Saved: now, Uplinks: uplinks}, "", "  ")
	if err != nil {
		return err
	}
	// A temporary file, synced, renamed over the old one.
	if err := atomicfile.Write(filepath.Join(dir, FileName), append(b, '\n'), 0o644); err != nil {
		return err
	}
	// The rename itself is durable only once the directory is synced.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
