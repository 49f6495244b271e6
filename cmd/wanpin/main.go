// Command wanpin is the multi-WAN router daemon and its command-line
// interface: `wanpin run` is the daemon, the other commands inspect or steer.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `wanpin: use several internet uplinks as one

Usage:
  wanpin run   [--config FILE]   run the daemon in the foreground
  wanpin check [--config FILE]   validate the policy file
  wanpin plan  [--config FILE] [--all-up]
                                 print the nftables table, ip rules and routes
                                 wanpin would install now (changes nothing)
  wanpin explain --dst ADDR [--src ADDR] [--proto tcp|udp] [--dport N] [--uid N] [--iif IFACE]
                                 which policy and uplink a new connection gets, and why
  wanpin exec --uplink NAME [--mptcp] -- COMMAND [ARG...]
                                 run a command whose connections all use one uplink (root)
  wanpin status [--json]         the uplinks' state, from the running daemon
  wanpin reload                  re-read the policy file (root)
  wanpin down UPLINK / up UPLINK  take an uplink out of service for maintenance,
                                 or put it back (root)
  wanpin quota reset UPLINK / quota set UPLINK SIZE
                                 start a data quota's count from zero, or set it
                                 (e.g. 30GB) until the next reload, restart or period (root)
  wanpin event up|down IFACE [--local ADDR] [--peer ADDR]
                                 news from a PPP hook (root)

The default FILE is /etc/wanpin/wanpin.toml.
`

// DefaultConfig is where Debian keeps the policy file.
const DefaultConfig = "/etc/wanpin/wanpin.toml"

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest, stderr)
	case "check":
		return cmdCheck(rest, stdout, stderr)
	case "plan":
		return cmdPlan(rest, stdout, stderr)
	case "explain":
		return cmdExplain(rest, stdout, stderr)
	case "exec":
		return cmdExec(rest, stderr)
	case "status":
		return cmdStatus(rest, stdout, stderr)
	case "reload":
		return cmdReload(rest, stdout, stderr)
	case "event":
		return cmdEvent(rest, stderr)
	case "up", "down":
		return cmdService(cmd, rest, stdout, stderr)
	case "quota":
		return cmdQuota(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "wanpin: unknown command %q\n\n%s", cmd, usage)
	return 2
}
