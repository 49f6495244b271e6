package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func newLab(t *testing.T) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	start := time.Now()
	l, err := New(Options{ISPs: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab built in %v", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// TestLabRoutesAndFilters: without NAT the LAN's traffic is dropped by
// the ISP as spoofed; the router's own traffic from each uplink address
// reaches the server through that ISP, in both families.
func TestLabRoutesAndFilters(t *testing.T) {
	l := newLab(t)
	if out, err := l.Exec(l.LAN, "curl", "-sS", "-m", "1", "http://203.0.113.10:8080/"); err == nil {
		t.Fatalf("LAN reached the server without NAT: %q", out)
	}
	if n, _ := l.SpoofedDrops(1); n == 0 {
		t.Error("ISP 1 dropped nothing from the un-NATed LAN host")
	}
	for i := 1; i <= 2; i++ {
		for _, c := range []struct{ src, dst string }{
			{UplinkAddr4(i), "http://203.0.113.10:8080/"},
			{UplinkAddr6(i), "http://[2001:db8:ff::10]:8080/"},
		} {
			// Source-bound sockets still follow the main table: route by
			// the uplink's own source with a rule, as wanpin will.
			fam := "-4"
			if strings.Contains(c.src, ":") {
				fam = "-6"
			}
			table := fmt.Sprint(100 + i)
			out, err := l.Exec(l.Router, "sh", "-c", fmt.Sprintf(
				"ip %[1]s rule add from %[2]s lookup %[3]s 2>/dev/null; ip %[1]s route replace default via %[4]s dev wan%[5]d table %[3]s && curl -sS -m 3 --interface %[2]s %[6]s",
				fam, c.src, table, gw(c.src, i), i, c.dst))
			if err != nil {
				t.Fatalf("router from %s: %v %s", c.src, err, out)
			}
			if got := strings.TrimSpace(out); l.ISPOf(got) != i {
				t.Errorf("router from %s: server saw %q, want ISP %d", c.src, got, i)
			}
		}
	}
}

func gw(src string, i int) string {
	if strings.Contains(src, ":") {
		return UplinkGateway6(i)
	}
	return UplinkGateway4(i)
}

func TestLabMasqueradeAndFailures(t *testing.T) {
	l := newLab(t)
	if _, err := l.Exec(l.Router, "nft", "add table ip t; add chain ip t p { type nat hook postrouting priority srcnat; }; add rule ip t p oifname \"wan1\" masquerade"); err != nil {
		t.Fatal(err)
	}
	counts, err := l.CurlMany(20)
	if err != nil {
		t.Fatal(err)
	}
	if counts[1] != 20 {
		t.Errorf("with masquerade on wan1: %v", counts)
	}
	if got, _ := l.UDPExchange(40000, ServerAddr4, time.Second); l.ISPOf(got) != 1 {
		t.Errorf("udp: server saw %q", got)
	}
	s, err := l.OpenStream("")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); s.Received() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if s.Received() == 0 || l.ISPOf(s.Peer()) != 1 {
		t.Errorf("stream: %d bytes, peer %q", s.Received(), s.Peer())
	}
	s.Close()
	if err := l.SetCarrier(1, false); err != nil {
		t.Fatal(err)
	}
	out, _ := l.Exec(l.Router, "ip", "link", "show", "wan1")
	if !strings.Contains(out, "NO-CARRIER") {
		t.Errorf("carrier down: %s", out)
	}
	l.SetCarrier(1, true)
	waitCarrier(t, l, "wan1", true)
	if err := l.Blackhole(1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(l.LAN, "curl", "-sS", "-m", "1", "http://203.0.113.10:8080/"); err == nil {
		t.Error("blackholed ISP still forwards")
	}
	if err := l.Blackhole(1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CurlMany(1); err != nil {
		t.Errorf("after blackhole off: %v", err)
	}
}

func TestLabCleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for i := 0; i < 2; i++ {
		l, err := New(Options{ISPs: 3})
		if err != nil {
			t.Fatal(err)
		}
		prefix := l.Prefix
		pids, _ := exec.Command("ip", "netns", "pids", l.Server).Output()
		if len(strings.Fields(string(pids))) == 0 {
			t.Fatal("no process in the server namespace (iperf3)")
		}
		l.Close()
		l.Close()
		out, _ := exec.Command("ip", "netns", "list").Output()
		if strings.Contains(string(out), prefix) {
			t.Fatalf("namespaces left: %s", out)
		}
		for _, pid := range strings.Fields(string(pids)) {
			if _, err := os.Stat("/proc/" + pid); err == nil {
				t.Errorf("process %s of the lab still running", pid)
			}
		}
	}
}
