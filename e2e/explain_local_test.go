package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// Addresses of a second LAN on the router, an interface no uplink is,
// added while wanpin runs.
const (
	lan2Router4    = "192.0.2.65" // 192.0.2.64/26
	lan2Router6    = "2001:db8:2::1"
	lanBroadcast4  = "192.0.2.63" // the LAN's 192.0.2.0/26
	portToRouter   = 8090         // TCP on the router: answers with the peer's address
	portBroadcastU = 9999         // UDP on the router: what arrives is written down
)

// explainJSON is what the tests read of `wanpin explain --json`.
type explainJSON struct {
	FromDaemon  bool `json:"from_daemon"`
	Explanation struct {
		Outcome string `json:"outcome"`
		Policy  string `json:"policy"`
		Why     string `json:"why"`
	} `json:"explanation"`
	Uplinks []struct {
		Uplink string `json:"uplink"`
		Kernel string `json:"kernel"`
	} `json:"uplinks"`
}

func explainAs(t *testing.T, l *netlab.Lab, d *daemon, args ...string) explainJSON {
	t.Helper()
	out := run(t, l, l.Router, append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin, "explain", "--json"}, args...)...)
	var e explainJSON
	if err := json.Unmarshal([]byte(out), &e); err != nil || !e.FromDaemon {
		t.Fatalf("explain %v: %v (from daemon %v)\n%s", args, err, e.FromDaemon, out)
	}
	return e
}

// notRouted checks that explain says the flow is never policy-routed,
// for why, and that explain's own kernel column (the route the kernel
// gives it) is the local table's.
func (e explainJSON) notRouted(t *testing.T, what, why string) {
	t.Helper()
	if e.Explanation.Outcome != "not routed" || e.Explanation.Why != why || e.Explanation.Policy != "" {
		t.Errorf("%s: explain says %q %q (policy %q), want \"not routed\" %q", what, e.Explanation.Outcome, e.Explanation.Why, e.Explanation.Policy, why)
	}
	if len(e.Uplinks) != 1 || !strings.Contains(e.Uplinks[0].Kernel, "table 255") {
		t.Errorf("%s: explain's kernel column %+v, want the local table's route", what, e.Uplinks)
	}
}

// unmarked checks the conntrack entries the filter lists: at least one,
// none with a mark (no uplink was chosen for them, none pinned).
func unmarked(t *testing.T, l *netlab.Lab, what string, filter ...string) {
	t.Helper()
	out := run(t, l, l.Router, append([]string{"conntrack", "-L"}, filter...)...)
	var entries []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "src=") {
			entries = append(entries, line)
		}
	}
	if len(entries) == 0 {
		t.Errorf("%s: no conntrack entry for %v:\n%s", what, filter, out)
	}
	for _, e := range entries {
		if !strings.Contains(e, " mark=0 ") {
			t.Errorf("%s: a marked conntrack entry: %s", what, e)
		}
	}
}

// TestExplainToRouter: traffic to the router itself, on any of its
// interfaces, and to a subnet's broadcast is what the table's chains
// return on before any policy or balancing (`fib daddr type local`,
// `meta pkttype != host`, `fib daddr type { local, broadcast, multicast
// }`). explain must say "not routed" for it, as the kernel treats it:
// the connection reaches the router unmarked. The second LAN is added
// after wanpin started: explain asks the kernel, not a list of its own.
func TestExplainToRouter(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+`
[[policy]]
name = "by-user"
users = ["4242"]
uplinks = ["isp2"]
`)
	for _, c := range []string{
		"link add lan2 type veth peer name lan2p", "link set lan2 up", "link set lan2p up",
		"addr add " + lan2Router4 + "/26 dev lan2", "addr add " + lan2Router6 + "/64 dev lan2 nodad",
	} {
		run(t, l, l.Router, append([]string{"ip"}, strings.Fields(c)...)...)
	}
	dir := t.TempDir()
	for _, listen := range []string{fmt.Sprintf("TCP4-LISTEN:%d,fork,reuseaddr", portToRouter), fmt.Sprintf("TCP6-LISTEN:%d,ipv6only=1,fork,reuseaddr", portToRouter)} {
		if _, err := l.Start(l.Router, filepath.Join(dir, "listen.log"), "socat", listen, "SYSTEM:echo $SOCAT_PEERADDR"); err != nil {
			t.Fatal(err)
		}
	}
	received := filepath.Join(dir, "broadcast.log")
	if _, err := l.Start(l.Router, received, "socat", "-u", fmt.Sprintf("UDP4-RECV:%d,reuseaddr", portBroadcastU), "STDOUT"); err != nil {
		t.Fatal(err)
	}

	for _, dst := range []string{netlab.LANRouter4, lan2Router4, netlab.LANRouter6, lan2Router6} {
		src, family := netlab.LANHost4, "ipv4"
		if strings.Contains(dst, ":") {
			src, family = netlab.LANHost6, "ipv6"
		}
		port := fmt.Sprint(portToRouter)
		explainAs(t, l, d, "--src", src, "--iif", "lan0", "--dst", dst, "--proto", "tcp", "--dport", port).
			notRouted(t, "LAN host to "+dst, "to the router itself")
		explainAs(t, l, d, "--uid", "4242", "--dst", dst, "--proto", "tcp", "--dport", port).
			notRouted(t, "the router's user 4242 to "+dst, "to the router itself")
		// The kernel: the LAN host's connection reaches the router's
		// listener, from the host's own address, unmarked.
		host := dst
		if family == "ipv6" {
			host = "[" + dst + "]"
		}
		waitUntil(t, 5*time.Second, "the router answering on "+dst, func() (bool, string) {
			out, _ := l.Exec(l.LAN, "sh", "-c", fmt.Sprintf("socat -T 2 - TCP:%s:%s,bind=%s </dev/null", host, port, bindAddr(src)))
			// socat writes an IPv6 peer in full, in brackets.
			peer, err := netip.ParseAddr(strings.Trim(strings.TrimSpace(out), "[]"))
			return err == nil && peer == netip.MustParseAddr(src), out
		})
		unmarked(t, l, "LAN host to "+dst, "-f", family, "-p", "tcp", "-d", dst, "--dport", port)
	}

	// The LAN's subnet broadcast, from the router's user whose policy
	// would take it to isp2, and from a LAN host.
	udp := fmt.Sprint(portBroadcastU)
	explainAs(t, l, d, "--uid", "4242", "--dst", lanBroadcast4, "--proto", "udp", "--dport", udp).
		notRouted(t, "the router's user 4242 to the subnet broadcast", "broadcast: never policy-routed")
	explainAs(t, l, d, "--src", netlab.LANHost4, "--iif", "lan0", "--dst", lanBroadcast4, "--proto", "udp", "--dport", udp).
		notRouted(t, "LAN host to the subnet broadcast", "broadcast: never policy-routed")
	for _, s := range []struct{ ns, prefix, payload string }{
		{l.Router, "setpriv --reuid=4242 --regid=4242 --clear-groups ", "from-user-4242"},
		{l.LAN, "", "from-lan-host"},
	} {
		waitUntil(t, 5*time.Second, s.payload+" reaching the router", func() (bool, string) {
			l.Exec(s.ns, "sh", "-c", fmt.Sprintf("echo %s | %ssocat -u - UDP4-DATAGRAM:%s:%s,broadcast", s.payload, s.prefix, lanBroadcast4, udp))
			b, _ := os.ReadFile(received)
			return strings.Contains(string(b), s.payload), string(b)
		})
	}
	unmarked(t, l, "the subnet broadcast", "-f", "ipv4", "-p", "udp", "-d", lanBroadcast4, "--dport", udp)
	if out := run(t, l, l.Router, "conntrack", "-L", "-f", "ipv4", "-p", "udp", "-d", lanBroadcast4, "--dport", udp); !strings.Contains(out, "src="+netlab.LANRouter4+" ") || !strings.Contains(out, "src="+netlab.LANHost4+" ") {
		t.Errorf("want the router's and the LAN host's broadcast in conntrack:\n%s", out)
	}
}

// bindAddr is an address as socat's bind= option takes it.
func bindAddr(a string) string {
	if strings.Contains(a, ":") {
		return "[" + a + "]"
	}
	return a
}
