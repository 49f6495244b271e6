// Package cgroups resolves the services named in policies (systemd units
// or cgroup v2 paths) to what nftables matches: the cgroup id, which is the
// inode number of the cgroup directory, and its depth in the hierarchy.
//
// A restarted unit gets a new cgroup directory and so a new id: callers
// resolve again periodically and re-apply when the answer changes.
package cgroups

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wanpin/wanpin/pkg/rules"
)

// Resolver resolves services against one cgroup v2 mount.
type Resolver struct {
	Root string // where cgroup2 is mounted; empty if it is not
}

// NewResolver finds the cgroup v2 mount: /sys/fs/cgroup on a unified
// system, /sys/fs/cgroup/unified on a hybrid one.
func NewResolver() (*Resolver, error) {
	root, err := mountPoint("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return &Resolver{Root: root}, nil
}

func mountPoint(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("finding the cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 25 0:30 / /sys/fs/cgroup rw,... - cgroup2 cgroup2 rw"
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", sc.Err()
}

// Resolve returns the cgroup matches for a service: an absolute cgroup
// path ("/wanpin-test") as is, or a unit name ("transmission-daemon.service")
// looked up under the slices. Nil with no error means "not running now".
func (r *Resolver) Resolve(service string) ([]rules.CgroupMatch, error) {
	if r.Root == "" {
		return nil, nil
	}
	var rel string
	if strings.HasPrefix(service, "/") {
		rel = filepath.Clean(service)
	} else {
		var err error
		rel, err = r.findUnit(service)
		if err != nil || rel == "" {
			return nil, err
		}
	}
	st, err := os.Stat(filepath.Join(r.Root, rel))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("resolving service %s: %w", service, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || !st.IsDir() {
		return nil, fmt.Errorf("resolving service %s: %s is not a cgroup directory", service, rel)
	}
	level := len(strings.Split(strings.Trim(rel, "/"), "/"))
	return []rules.CgroupMatch{{Level: level, ID: sys.Ino}}, nil
}

// findUnit looks for the unit's cgroup: system.slice first (where system
// services live), then anywhere up to four levels deep.
func (r *Resolver) findUnit(unit string) (string, error) {
	if st, err := os.Stat(filepath.Join(r.Root, "system.slice", unit)); err == nil && st.IsDir() {
		return "/system.slice/" + unit, nil
	}
	var found string
	err := filepath.WalkDir(r.Root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || found != "" {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(r.Root, path)
		if strings.Count(rel, "/") >= 4 {
			return filepath.SkipDir
		}
		if d.Name() == unit {
			found = "/" + rel
			return filepath.SkipAll
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("looking for the cgroup of %s: %w", unit, err)
	}
	return found, nil
}
