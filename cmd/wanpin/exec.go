package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/core"
)

// cmdExec runs a command whose connections all leave through one uplink,
// without LD_PRELOAD: it puts itself in a cgroup of its own, has the
// daemon pin that cgroup's new connections to the uplink (nftables
// matches `socket cgroupv2`), and then becomes the command. Children stay
// in the cgroup; the daemon forgets it once the last process has ended.
func cmdExec(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanpin exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	uplink := fs.String("uplink", "", "the uplink every connection of the command uses")
	if fs.Parse(args) != nil || *uplink == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: wanpin exec --uplink NAME -- COMMAND [ARG...]")
		return 2
	}
	argv := fs.Args()
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		return 127
	}
	res, err := cgroups.NewResolver()
	if err != nil || res.Root == "" {
		fmt.Fprintf(stderr, "wanpin exec: no cgroup v2 hierarchy (%v)\n", err)
		return 1
	}
	rel := core.ExecRoot + "/" + strconv.Itoa(os.Getpid())
	dir := filepath.Join(res.Root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		return 1
	}
	leave := func() {
		_ = os.WriteFile(filepath.Join(res.Root, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		_ = os.Remove(dir)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintf(stderr, "wanpin exec: joining %s: %v\n", dir, err)
		leave()
		return 1
	}
	c, ok := dial(stderr, "exec")
	if !ok {
		leave()
		return 1
	}
	err = c.Exec(context.Background(), *uplink, rel)
	c.Close()
	if err != nil {
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		leave()
		return 1
	}
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
	leave()
	return 126
}
