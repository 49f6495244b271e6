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

	"github.com/wanpin/wanpin/pkg/policy"
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
func (r *Resolver) Resolve(service string) ([]policy.CgroupMatch, error) {
	if r.Root == "" {
		return nil, nil
	}
	rel, err := r.path(service)
	if err != nil || rel == "" {
		return nil, err
	}
	id, err := r.id(rel)
	if err != nil || id == 0 {
		if err != nil {
			err = fmt.Errorf("resolving service %s: %w", service, err)
		}
		return nil, err
	}
	return []policy.CgroupMatch{{Level: depth(rel), ID: id}}, nil
}

// Lineage is the cgroup ids of a service's cgroup and its ancestors, by
// level (0 the root): what `socket cgroupv2 level N` sees of a socket
// made in it. Nil with no error means "not running now".
func (r *Resolver) Lineage(service string) ([]uint64, error) {
	if r.Root == "" {
		return nil, nil
	}
	rel, err := r.path(service)
	if err != nil || rel == "" {
		return nil, err
	}
	var out []uint64
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	if rel == "/" {
		parts = nil
	}
	for i := 0; i <= len(parts); i++ {
		id, err := r.id("/" + strings.Join(parts[:i], "/"))
		if err != nil || id == 0 {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

// path is the cgroup path of a service: an absolute path as is, a unit
// found under the slices ("" if it is not running).
func (r *Resolver) path(service string) (string, error) {
	if strings.HasPrefix(service, "/") {
		return filepath.Clean(service), nil
	}
	return r.findUnit(service)
}

// id is a cgroup's id: its directory's inode number (0: no such cgroup).
func (r *Resolver) id(rel string) (uint64, error) {
	st, err := os.Stat(filepath.Join(r.Root, rel))
	if err != nil {
		if os.IsNotExist(err) {
			return 0, nil
		}
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || !st.IsDir() {
		return 0, fmt.Errorf("%s is not a cgroup directory", rel)
	}
	return sys.Ino, nil
}

// depth is a cgroup path's level: 0 for the root.
func depth(rel string) int {
	rel = strings.Trim(rel, "/")
	if rel == "" {
		return 0
	}
	return len(strings.Split(rel, "/"))
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
