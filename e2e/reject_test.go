package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// lan2Host is a host on a second LAN behind the router (lan2,
// 192.0.2.64/26), in a namespace of the lab's own: a printer or a NAS.
const lan2Host = "192.0.2.70"

// addSecondLAN builds the second LAN and starts an echo of the peer's
// address on lan2Host:8080.
func addSecondLAN(t *testing.T, l *netlab.Lab) {
	t.Helper()
	ns := l.Prefix + "-lan2"
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "link", "add", "lan2", "netns", l.Router, "type", "veth", "peer", "eth0", "netns", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	run(t, l, l.Router, "ip", "link", "set", "lan2", "up")
	run(t, l, l.Router, "ip", "addr", "add", lan2Router4+"/26", "dev", "lan2")
	for _, c := range []string{"link set lo up", "link set eth0 up", "addr add " + lan2Host + "/26 dev eth0", "route add default via " + lan2Router4} {
		run(t, l, ns, append([]string{"ip"}, strings.Fields(c)...)...)
	}
	if _, err := l.Start(ns, t.TempDir()+"/echo.log", "socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the second LAN's echo", func() (bool, string) {
		out, _ := l.Exec(l.LAN, "socat", "-T", "2", "-", "TCP:"+lan2Host+":8080")
		return strings.TrimSpace(out) == netlab.LANHost4, out
	})
}

// TestRejectOnlyOutOfUplinks: policies with fallback = "none" whose
// uplink is down refuse what would leave by an uplink, at once, and
// nothing else: the LAN host and the router's user keep the host on the
// second LAN. Before, the reject came before routing, and a policy's
// hosts lost the printer whenever its ISP dropped.
func TestRejectOnlyOutOfUplinks(t *testing.T) {
	l := newLab(t, 2)
	addSecondLAN(t, l)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 1, 1)+`
[[policy]]
name = "host-isp2"
sources = ["`+netlab.LANHost4+`/32"]
uplinks = ["isp2"]
fallback = "none"

[[policy]]
name = "user-isp2"
users = ["4242"]
uplinks = ["isp2"]
fallback = "none"
`)
	if err := l.SetCarrier(2, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink down" uplink=isp2`, 1, 5*time.Second)
	asUser := []string{"setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"}
	for _, c := range []struct {
		what string
		ns   string
		pre  []string
		want string
	}{{"the LAN host", l.LAN, nil, netlab.LANHost4}, {"the router's user 4242", l.Router, asUser, lan2Router4}} {
		out, _ := l.Exec(c.ns, append(c.pre, "socat", "-T", "2", "-", "TCP:"+lan2Host+":8080")...)
		if strings.TrimSpace(out) != c.want {
			t.Errorf("%s to the second LAN with its policy's uplink down: %q, want the echo %s", c.what, out, c.want)
		}
		start := time.Now()
		out, err := l.Exec(c.ns, append(c.pre, "curl", "-sS", "--connect-timeout", "5", fmt.Sprintf("http://%s:%d/", netlab.ServerAddr4, netlab.PortWhoami))...)
		if took := time.Since(start); err == nil || took > 2*time.Second {
			t.Errorf("%s to the internet with its policy's uplink down: %v after %v (%q), want refused at once", c.what, err, took.Round(time.Millisecond), out)
		}
	}
	// explain says where the reject applies.
	out, _ := wanpinIn(t, d, "explain", "--src", netlab.LANHost4, "--iif", "lan0", "--dst", netlab.ServerAddr4)
	if !strings.Contains(out, "where it would leave by an uplink") {
		t.Errorf("explain of a rejected connection:\n%s", out)
	}
	// And the kernel column says the second LAN is reached by no uplink.
	out, _ = wanpinIn(t, d, "explain", "--src", netlab.LANHost4, "--iif", "lan0", "--dst", lan2Host)
	if !strings.Contains(out, "dev lan2") || !strings.Contains(out, "by no uplink") {
		t.Errorf("explain of the rejecting policy's connection to the second LAN:\n%s", out)
	}
}
