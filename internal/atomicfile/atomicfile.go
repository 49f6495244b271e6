// Package atomicfile writes files that a reader (or a crash) never sees
// half written, through google/renameio.
package atomicfile

import (
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// Write replaces path with data, mode perm exactly (not the umask's): a
// temporary file in path's own directory, synced and renamed over it.
// The temporary file is made beside path, never in $TMPDIR, whose
// renameio probe would otherwise create and rename files there on every
// write (and fail across mounts, as a sandboxed service's private /tmp
// is).
func Write(path string, data []byte, perm os.FileMode) error {
	return renameio.WriteFile(path, data, perm,
		renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(perm))
}
