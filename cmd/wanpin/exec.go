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
)

// cmdExec runs a command whose connections all leave through one uplink
// (with --mptcp, under mptcpize: its first subflows do, the others leave
// by their endpoints' uplinks),
// without LD_PRELOAD: the daemon makes a cgroup, moves this process into
// it and pins its new connections to the uplink (nftables matches
// `socket cgroupv2`); this process then becomes the command. Children stay in the
// cgroup; the daemon forgets it once the last process has ended.
func cmdExec(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanpin exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	uplink := fs.String("uplink", "", "the uplink every connection of the command uses (with --mptcp: its first subflow)")
	mptcp := fs.Bool("mptcp", false, "run the command under mptcpize (package mptcpd): its TCP sockets are MPTCP, with a subflow through each uplink wanpin made an endpoint for")
	if fs.Parse(args) != nil || (*uplink == "" && !*mptcp) || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: wanpin exec --uplink NAME [--mptcp] -- COMMAND [ARG...]\n       wanpin exec --mptcp -- COMMAND [ARG...]")
		return 2
	}
	argv := fs.Args()
	if *mptcp {
		// mptcpize sets LD_PRELOAD so that the command's TCP sockets are
		// opened as IPPROTO_MPTCP; the kernel falls back to TCP where the
		// far end does not speak it.
		wrapper, err := exec.LookPath("mptcpize")
		if err != nil {
			fmt.Fprintf(stderr, "wanpin exec --mptcp: %v (apt install mptcpd)\n", err)
			return 127
		}
		argv = append([]string{wrapper, "run"}, argv...)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		return 127
	}
	if *uplink == "" {
		err = syscall.Exec(path, argv, os.Environ())
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		return 126
	}
	res, err := cgroups.NewResolver()
	if err != nil || res.Root == "" {
		fmt.Fprintf(stderr, "wanpin exec: no cgroup v2 hierarchy (%v)\n", err)
		return 1
	}
	c, ok := dial(stderr, "exec")
	if !ok {
		return 1
	}
	// The daemon makes the cgroup (a fresh one, named by it), moves this
	// process into it and pins it; this process then becomes the command.
	if _, err := c.Exec(context.Background(), *uplink); err != nil {
		c.Close()
		fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
		return 1
	}
	c.Close()
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(stderr, "wanpin exec: %v\n", err)
	// Back to the root cgroup: the daemon reaps the empty one.
	_ = os.WriteFile(filepath.Join(res.Root, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	return 126
}
