package daemon

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultRTTables are where iproute2 names routing tables: the admin's
// files in /etc and Debian's defaults under /usr/share (iproute2 6.x).
var DefaultRTTables = []string{
	"/etc/iproute2/rt_tables", "/etc/iproute2/rt_tables.d/*.conf",
	"/usr/share/iproute2/rt_tables", "/usr/share/iproute2/rt_tables.d/*.conf",
}

// NamedTables reads table ids and names ("200 vpn") from the files and
// globs given; unreadable files are skipped (they name nothing).
func NamedTables(patterns []string) map[int]string {
	out := map[int]string{}
	for _, pat := range patterns {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			readRTTables(f, out)
		}
	}
	return out
}

func readRTTables(path string, out map[int]string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		id, err := strconv.ParseUint(fields[0], 0, 32)
		if err != nil {
			continue
		}
		out[int(id)] = fields[1]
	}
}
