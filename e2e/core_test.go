package e2e

import (
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestWeightedBalancing: weights 3:1, 400 new connections from the LAN;
// the server sees each uplink's share within a few percent of 75/25, and
// no ISP saw a packet with a source that was not its customer's.
func TestWeightedBalancing(t *testing.T) {
	l := newLab(t, 2)
	startWanpin(t, l, fmt.Sprintf(twoUplinks, 3, 1))
	counts, err := l.CurlMany(400)
	if err != nil {
		t.Fatal(err)
	}
	total := counts[1] + counts[2]
	if total != 400 {
		t.Fatalf("server saw %d of 400 connections (%v)", total, counts)
	}
	share := float64(counts[1]) / float64(total)
	// Binomial: sd = sqrt(.75*.25/400) = 2.2 points; 7 points is 3.2 sd.
	if math.Abs(share-0.75) > 0.07 {
		t.Errorf("uplink 1 share %.1f%%, want 75%% ± 7 (counts %v)", share*100, counts)
	}
	t.Logf("shares: isp1 %d, isp2 %d (%.1f%% / %.1f%%)", counts[1], counts[2], share*100, 100-share*100)
	assertNoSpoofed(t, l)
}

// assertNoSpoofed fails the test if an ISP dropped a packet, of either
// family, whose source was not its customer's: a wrong NAT.
func assertNoSpoofed(t *testing.T, l *netlab.Lab) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		for _, c := range []struct {
			family string
			read   func(int) (uint64, error)
		}{{"IPv4", l.SpoofedDrops}, {"IPv6", l.SpoofedDrops6}} {
			n, err := c.read(i)
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("ISP %d dropped %d %s packets with a foreign source address: wrong NAT", i, n, c.family)
			}
		}
	}
}

// TestPolicies, per family: source, port, user, service and destination
// (fallback none) policies send traffic to the backup uplink, and the
// rest stays on the primary; with the backup down the strict policy
// rejects at once and the source policy falls back.
func TestPolicies(t *testing.T) {
	for _, f := range []struct {
		name           string
		host, alt      string // the LAN host's default and policy-matched source
		server, strict string // the server, and the destination of the strict policy
	}{
		{"IPv4", netlab.LANHost4, netlab.LANHostAlt4, netlab.ServerAddr4, "203.0.113.11"},
		{"IPv6", netlab.LANHost6, "2001:db8:1::20", netlab.ServerAddr6, "2001:db8:ff::11"},
	} {
		t.Run(f.name, func(t *testing.T) {
			l := newLab(t, 2)
			if f.name == "IPv6" {
				run(t, l, l.LAN, "ip", "addr", "add", f.alt+"/64", "dev", "eth0", "nodad")
			}
			cg := cgroupDir(t)
			cfg := fmt.Sprintf(twoUplinks, 1, 1) + `
tier = 2   # isp2 is a backup: only policies send traffic there

[[policy]]
name = "by-source"
sources = ["192.0.2.20/32", "2001:db8:1::20/128"]
uplinks = ["isp2"]

[[policy]]
name = "by-port"
protocol = "tcp"
ports = ["8082"]
uplinks = ["isp2"]

[[policy]]
name = "by-user"
users = ["4242"]
uplinks = ["isp2"]

[[policy]]
name = "by-service"
services = ["` + cg.rel + `"]
uplinks = ["isp2"]

[[policy]]
name = "strict"
destinations = ["203.0.113.11/32", "2001:db8:ff::11/128"]
uplinks = ["isp2"]
fallback = "none"
`
			d := startWanpin(t, l, cfg)
			d.waitFor("service cgroup", 1, 5*time.Second)

			urlOf := func(addr string, port int) string {
				return fmt.Sprintf("http://%s/", net.JoinHostPort(addr, fmt.Sprint(port)))
			}
			url := urlOf(f.server, netlab.PortWhoami)
			// isp runs curl in ns and says through which ISP the server saw it.
			isp := func(ns string, args ...string) int {
				t.Helper()
				return l.ISPOf(strings.TrimSpace(run(t, l, ns, append([]string{"curl", "-sS", "-m", "5"}, args...)...)))
			}
			if got := isp(l.LAN, "--interface", f.host, url); got != 1 {
				t.Errorf("default traffic went through ISP %d, want 1", got)
			}
			if got := isp(l.LAN, "--interface", f.alt, url); got != 2 {
				t.Errorf("source policy: ISP %d, want 2", got)
			}
			// Port policy: the stream service on 8082 reports nothing
			// in-band; the server's record says where it came from.
			l.ResetSeen()
			l.Exec(l.LAN, "curl", "-sS", "-m", "1", "-o", "/dev/null", "--interface", f.host, urlOf(f.server, 8082))
			if seen := l.Seen(); !onlyISP(l, seen, 2) {
				t.Errorf("port policy: server saw %v, want only ISP 2", seen)
			}
			// The router's own traffic: by uid, and by cgroup.
			if got := isp(l.Router, url); got != 1 {
				t.Errorf("router's own default traffic: ISP %d, want 1", got)
			}
			priv := []string{"setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "curl", "-sS", "-m", "5", url}
			if got := l.ISPOf(strings.TrimSpace(run(t, l, l.Router, priv...))); got != 2 {
				t.Errorf("user policy: ISP %d, want 2", got)
			}
			inCgroup := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec curl -sS -m 5 %s", cg.abs, url)
			if got := l.ISPOf(strings.TrimSpace(run(t, l, l.Router, "sh", "-c", inCgroup))); got != 2 {
				t.Errorf("service policy: ISP %d, want 2", got)
			}
			// fallback none: with isp2 up, the strict destination goes
			// through it; with isp2 gone, connections to it are refused
			// at once while the source policy falls back to isp1.
			strictURL := urlOf(f.strict, netlab.PortWhoami)
			if got := isp(l.LAN, "--interface", f.host, strictURL); got != 2 {
				t.Errorf("strict policy: ISP %d, want 2", got)
			}
			if err := l.SetCarrier(2, false); err != nil {
				t.Fatal(err)
			}
			d.waitFor("uplink down", 1, 5*time.Second)
			out, err := l.Exec(l.LAN, "curl", "-sS", "-m", "3", "--interface", f.host, strictURL)
			if err == nil {
				t.Errorf("strict policy with its uplink down: connection succeeded (%q), want refused", out)
			} else if strings.Contains(out, "timed out") {
				t.Errorf("strict policy with its uplink down: timed out, want an immediate reject: %s", out)
			}
			if got := isp(l.LAN, "--interface", f.alt, url); got != 1 {
				t.Errorf("source policy with fallback any and isp2 down: ISP %d, want 1", got)
			}
			assertNoSpoofed(t, l)
		})
	}
}

func onlyISP(l interface{ ISPOf(string) int }, seen map[string]int, want int) bool {
	if len(seen) == 0 {
		return false
	}
	for addr := range seen {
		if l.ISPOf(addr) != want {
			return false
		}
	}
	return true
}

type cgroup struct{ abs, rel string }

// cgroupDir makes a cgroup v2 directory for the service policy test.
func cgroupDir(t *testing.T) cgroup {
	t.Helper()
	root := ""
	for _, c := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(c, "cgroup.procs")); err == nil {
			if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+c+" ") && strings.Contains(string(b), "cgroup2") {
				root = c
				break
			}
		}
	}
	if root == "" {
		t.Skip("no cgroup v2 mount")
	}
	rel := fmt.Sprintf("/wanpin-e2e-%d", os.Getpid())
	abs := filepath.Join(root, rel)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Processes that ran in it have exited; move any straggler out.
		b, _ := os.ReadFile(filepath.Join(abs, "cgroup.procs"))
		for _, pid := range strings.Fields(string(b)) {
			os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
		}
		os.Remove(abs)
	})
	return cgroup{abs: abs, rel: rel}
}

// TestInboundPinned: a connection opened from the internet to uplink 2's
// address gets its replies through uplink 2 while uplink 1 carries the
// default. The ISPs drop foreign sources, so a reply that left through
// ISP 1 would be lost and the connection would fail.
func TestInboundPinned(t *testing.T) {
	l := newLab(t, 2)
	startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+"tier = 2\n")
	p, err := l.Start(l.Router, filepath.Join(t.TempDir(), "socat.log"),
		"socat", "TCP-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo pong")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	waitUntil(t, 5*time.Second, "socat to listen on the router's port 9000", func() (bool, string) {
		out, err := l.Exec(l.Router, "ss", "-Hltn", "sport = :9000")
		return err == nil && strings.Contains(out, ":9000"), fmt.Sprintf("ss: %v %q", err, out)
	})
	for i := 0; i < 5; i++ {
		for up := 1; up <= 2; up++ {
			addr := netlab.UplinkAddr4(up)
			out, err := l.Exec(l.Server, "socat", "-T", "3", "-", "TCP:"+addr+":9000,connect-timeout=3")
			if err != nil || strings.TrimSpace(out) != "pong" {
				t.Fatalf("server to uplink %d address %s: %v %q", up, addr, err, out)
			}
		}
	}
	assertNoSpoofed(t, l)
}

// TestStreamSurvivesReload: a long-lived TCP stream keeps flowing, on the
// same uplink, across a reload that changes the weights.
func TestStreamSurvivesReload(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if why := stillFlowing(s); why != "" {
		t.Fatalf("stream before the first reload: %s", why)
	}
	peer := s.Peer()
	for i, w := range [][2]int{{1, 5}, {5, 1}, {2, 3}} {
		d.writeConfig(fmt.Sprintf(twoUplinks, w[0], w[1]))
		d.proc.Signal(syscall.SIGHUP)
		d.waitFor("configuration reloaded", i+1, 5*time.Second)
		if why := stillFlowing(s); why != "" {
			t.Fatalf("stream after reload %d: %s", i+1, why)
		}
	}
	if got := s.Peer(); got != peer {
		t.Errorf("stream moved from %s to %s", peer, got)
	}
	if err := s.Err(); err != nil {
		t.Errorf("stream broke: %v", err)
	}
}

var tableSummary = regexp.MustCompile(`(?m)^\s*(chain|set|map) `)

// kernelCounts counts wanpin's objects in the router namespace.
func kernelCounts(t *testing.T, l labExec, ns string) string {
	t.Helper()
	rules4 := strings.Count(run2(t, l, ns, "ip", "-4", "rule"), "proto 119")
	rules6 := strings.Count(run2(t, l, ns, "ip", "-6", "rule"), "proto 119")
	routes4 := strings.Count(run2(t, l, ns, "ip", "-4", "route", "show", "table", "all", "proto", "119"), "\n")
	routes6 := strings.Count(run2(t, l, ns, "ip", "-6", "route", "show", "table", "all", "proto", "119"), "\n")
	tables := strings.Count(run2(t, l, ns, "nft", "list", "tables"), "wanpin")
	nft, err := l.Exec(ns, "nft", "list", "table", "inet", "wanpin")
	if err != nil {
		nft = "" // no table
	}
	objects := len(tableSummary.FindAllString(nft, -1))
	// Every line of the listing but the table's flags and comments, which
	// differ between an owned table and one orphaned by a SIGKILL.
	rulesNft := 0
	for _, line := range strings.Split(nft, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "flags") && !strings.HasPrefix(line, "#") {
			rulesNft++
		}
	}
	return fmt.Sprintf("rules v4=%d v6=%d routes v4=%d v6=%d nft tables=%d objects=%d lines=%d",
		rules4, rules6, routes4, routes6, tables, objects, rulesNft)
}

type labExec interface {
	Exec(ns string, args ...string) (string, error)
}

func run2(t *testing.T, l labExec, ns string, args ...string) string {
	t.Helper()
	out, err := l.Exec(ns, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestKillAndRestart: 20 rounds of SIGKILL and start leave exactly the
// objects one start leaves; SIGTERM leaves none of wanpin's.
func TestKillAndRestart(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 3, 1)+`
[[policy]]
name = "web"
protocol = "tcp"
ports = ["80", "443"]
uplinks = ["isp2"]
`)
	want := kernelCounts(t, l, l.Router)
	t.Logf("after one start: %s", want)
	for i := 0; i < 20; i++ {
		d.stop(syscall.SIGKILL)
		// The router keeps routing while wanpin is dead.
		if i == 0 {
			if got := kernelCounts(t, l, l.Router); got != want {
				t.Fatalf("after SIGKILL: %s, want %s", got, want)
			}
			if _, err := l.CurlMany(4); err != nil {
				t.Fatalf("traffic while wanpin is dead: %v", err)
			}
		}
		d.start()
		if got := kernelCounts(t, l, l.Router); got != want {
			t.Fatalf("round %d: %s, want %s", i+1, got, want)
		}
	}
	d.stop(syscall.SIGTERM)
	if got := kernelCounts(t, l, l.Router); got != "rules v4=0 v6=0 routes v4=0 v6=0 nft tables=0 objects=0 lines=0" {
		t.Errorf("after SIGTERM: %s", got)
	}
}

// TestForeignStateSurvives: a canary nftables table, ip rule and a mark
// bit outside mark_mask, added before wanpin starts, are intact after
// start, reload and stop.
func TestForeignStateSurvives(t *testing.T) {
	l := newLab(t, 2)
	r := l.Router
	// The canary table sets bit 0x1 on every packet from the LAN before
	// wanpin's chains run, and counts, after them, the LAN's packets to
	// the server and those that still carry the bit. (Only those: the
	// kernel's own untracked IPv6 neighbour traffic passes postrouting
	// with iif lan0 without ever crossing prerouting.)
	canary := filepath.Join(t.TempDir(), "canary.nft")
	os.WriteFile(canary, []byte(`table inet canary {
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		iifname "lan0" meta mark set meta mark | 0x00000001
	}
	chain post {
		type filter hook postrouting priority 300; policy accept;
		iifname "lan0" ip daddr 203.0.113.0/24 counter
		iifname "lan0" ip daddr 203.0.113.0/24 meta mark & 0x00000001 == 0x00000001 counter
	}
}
`), 0o644)
	run(t, l, r, "nft", "-f", canary)
	run(t, l, r, "ip", "rule", "add", "priority", "10050", "from", "192.0.2.99", "lookup", "300")
	check := func(stage string) {
		t.Helper()
		if out := run(t, l, r, "ip", "rule"); !strings.Contains(out, "10050:\tfrom 192.0.2.99 lookup 300") {
			t.Errorf("%s: canary rule gone:\n%s", stage, out)
		}
		out := run(t, l, r, "nft", "list", "chain", "inet", "canary", "post")
		m := regexp.MustCompile(`packets (\d+)`).FindAllStringSubmatch(out, -1)
		if len(m) != 2 {
			t.Fatalf("%s: canary table damaged:\n%s", stage, out)
		}
		if m[0][1] != m[1][1] {
			t.Errorf("%s: %s LAN packets, only %s kept mark bit 0x1:\n%s", stage, m[0][1], m[1][1], out)
		}
	}
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1))
	if _, err := l.CurlMany(20); err != nil {
		t.Fatal(err)
	}
	check("after start")
	d.writeConfig(fmt.Sprintf(twoUplinks, 2, 1))
	d.proc.Signal(syscall.SIGHUP)
	d.waitFor("configuration reloaded", 1, 5*time.Second)
	if _, err := l.CurlMany(20); err != nil {
		t.Fatal(err)
	}
	check("after reload")
	d.stop(syscall.SIGTERM)
	check("after stop")
	if out := run(t, l, r, "nft", "list", "tables"); !strings.Contains(out, "canary") || strings.Contains(out, "wanpin") {
		t.Errorf("after stop: tables %q", out)
	}
}
