// Command demo shows wanpin at work in the lab: a LAN host, the router
// running wanpin, two ISPs and a server, all in network namespaces that
// are deleted at the end. Run it with scripts/demo.sh (as root).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

const config = `# The demo's policy file.
[[uplink]]
name      = "dsl"
interface = "wan1"
weight    = 3

[[uplink]]
name      = "cable"
interface = "wan2"
weight    = 1

# The LAN host's second address always goes out through the cable ISP.
[[policy]]
name    = "guest"
sources = ["192.0.2.20/32"]
uplinks = ["cable"]
`

func main() {
	bin := flag.String("wanpin", "./bin/wanpin", "the wanpin binary")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m== "+format+"\033[0m\n", args...)
}

func run(bin string) error {
	netlab.Sweep()
	l, err := netlab.New(netlab.Options{ISPs: 2})
	if err != nil {
		return err
	}
	defer func() {
		l.Close()
		fmt.Println("\nlab removed: no namespace, rule or table is left behind.")
	}()
	dir, err := os.MkdirTemp("", "wanpin-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "wanpin.toml")
	logPath := filepath.Join(dir, "wanpin.log")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}

	step("The lab: LAN 192.0.2.0/26 -- router -- ISP 1 (wan1, 198.51.100.2) / ISP 2 (wan2, 198.51.100.10) -- server 203.0.113.10")
	fmt.Print(config)

	step("wanpin check, then wanpin run in the router's namespace")
	out, _ := l.Exec(l.Router, bin, "check", "--config", cfgPath)
	fmt.Print(out)
	// The demo never touches the machine's own D-Bus system bus, nor its
	// /run/wanpin.
	p, err := l.Start(l.Router, logPath, "env", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent", bin, "run", "--config", cfgPath,
		"--runtime-dir", filepath.Join(dir, "run"))
	if err != nil {
		return err
	}
	defer p.Close()
	if err := waitLog(logPath, "nftables applied", 1, 10*time.Second); err != nil {
		return err
	}
	status(l, bin, logPath)

	step("What it installed: ip rules (the nftables table is in `wanpin plan`)")
	out, _ = l.Exec(l.Router, "ip", "-4", "rule")
	fmt.Print(out)

	step("200 new connections from the LAN host: weights 3:1")
	counts, err := l.CurlMany(200)
	if err != nil {
		return err
	}
	shares(counts)

	step("The same over IPv6: 200 connections from the LAN host's 2001:db8:1::10, masqueraded per uplink")
	counts, err = l.CurlManySrc(netlab.LANHost6, netlab.ServerAddr6, 200)
	if err != nil {
		return err
	}
	shares(counts)

	step("The policy: the LAN host's 192.0.2.20 goes through the cable ISP only")
	out, err = l.Exec(l.LAN, "sh", "-c", "for i in $(seq 20); do curl -sS -m 5 --interface 192.0.2.20 http://203.0.113.10:8080/; done")
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	policy := map[int]int{}
	for _, a := range strings.Fields(out) {
		policy[l.ISPOf(a)]++
	}
	shares(policy)

	step("ISP 1 loses its line")
	if err := l.SetCarrier(1, false); err != nil {
		return err
	}
	if err := waitLog(logPath, "uplink down", 1, 5*time.Second); err != nil {
		return err
	}
	status(l, bin, logPath)
	counts, err = l.CurlMany(40)
	if err != nil {
		return err
	}
	fmt.Println("40 new connections while ISP 1 is down:")
	shares(counts)
	s, err := l.OpenStream("")
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("a long download starts now: pinned to ISP %d (the server sees %s)\n", l.ISPOf(s.Peer()), s.Peer())

	step("ISP 1 comes back: new connections use both again, the download stays where it was")
	before := s.Received()
	if err := l.SetCarrier(1, true); err != nil {
		return err
	}
	if err := waitLog(logPath, "uplink up", 3, 5*time.Second); err != nil {
		return err
	}
	counts, err = l.CurlMany(100)
	if err != nil {
		return err
	}
	shares(counts)
	time.Sleep(300 * time.Millisecond)
	fmt.Printf("the download: %d MB more since ISP 1 came back, still through ISP %d, error: %v\n",
		(s.Received()-before)>>20, l.ISPOf(s.Peer()), s.Err())
	for i := 1; i <= 2; i++ {
		n, _ := l.SpoofedDrops(i)
		fmt.Printf("ISP %d dropped %d packets with a wrong source address\n", i, n)
	}

	step("SIGTERM: wanpin removes everything it installed")
	p.Signal(syscall.SIGTERM)
	p.Wait(10 * time.Second)
	out, _ = l.Exec(l.Router, "sh", "-c", "ip rule; nft list tables")
	fmt.Print(out)
	return nil
}

// status prints the uplinks' latest transitions from the daemon's log.
func status(l *netlab.Lab, bin, logPath string) {
	b, _ := os.ReadFile(logPath)
	last := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `msg="uplink `) {
			name := field(line, "uplink")
			last[name] = line
		}
	}
	var names []string
	for n := range last {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("%-6s %-5s %-5s %s\n", "UPLINK", "IFACE", "STATE", "REASON")
	for _, n := range names {
		line := last[n]
		state := "down"
		if strings.Contains(line, `msg="uplink up"`) {
			state = "up"
		}
		fmt.Printf("%-6s %-5s %-5s %s\n", n, field(line, "interface"), state, field(line, "reason"))
	}
}

// field extracts key=value or key="value" from a slog text line.
func field(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	rest := line[i+len(key)+2:]
	if strings.HasPrefix(rest, `"`) {
		if j := strings.Index(rest[1:], `"`); j >= 0 {
			return rest[1 : j+1]
		}
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		return rest[:j]
	}
	return rest
}

func shares(counts map[int]int) {
	total := 0
	for _, n := range counts {
		total += n
	}
	for i := 1; i <= 2; i++ {
		fmt.Printf("  through ISP %d: %3d (%.0f%%)\n", i, counts[i], 100*float64(counts[i])/float64(max(total, 1)))
	}
}

func waitLog(path, s string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Count(string(b), s) >= n {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	return fmt.Errorf("waiting for %q in wanpin's log:\n%s", s, b)
}
