package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// kernelState is everything wanpin owns in the router namespace, as text:
// its ip rules and routes (both families) and its nftables table without
// the flags and owner comment (which differ between an owned table and
// one orphaned by SIGKILL) and without counter values.
func kernelState(t *testing.T, l *netlab.Lab) string {
	t.Helper()
	var b strings.Builder
	for _, fam := range []string{"-4", "-6"} {
		for _, line := range strings.Split(run(t, l, l.Router, "ip", fam, "rule"), "\n") {
			if strings.Contains(line, "proto 119") {
				b.WriteString(line + "\n")
			}
		}
		b.WriteString(run(t, l, l.Router, "ip", fam, "route", "show", "table", "all", "proto", "119"))
	}
	nft, err := l.Exec(l.Router, "nft", "list", "table", "inet", "wanpin")
	if err == nil {
		counters := regexp.MustCompile(`counter packets \d+ bytes \d+`)
		for _, line := range strings.Split(nft, "\n") {
			tl := strings.TrimSpace(line)
			if strings.HasPrefix(tl, "flags") || strings.HasPrefix(tl, "#") || tl == "" {
				continue
			}
			line = regexp.MustCompile(` # progname \S+`).ReplaceAllString(line, "")
			b.WriteString(counters.ReplaceAllString(line, "counter") + "\n")
		}
	}
	return b.String()
}

// TestRestartDrill: 100 restarts, half of them with SIGKILL: after each,
// the kernel state is exactly that of a single clean start; after the
// final SIGTERM nothing of wanpin's is left.
func TestRestartDrill(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 3, 1)+`
[[policy]]
name = "web"
protocol = "tcp"
ports = ["80", "443"]
destinations = ["203.0.113.0/24", "2001:db8:ff::/64"]
uplinks = ["isp2"]
`)
	want := kernelState(t, l)
	for i := 0; i < 100; i++ {
		sig := syscall.SIGTERM
		if i%2 == 0 {
			sig = syscall.SIGKILL
		}
		d.stop(sig)
		d.start()
		if got := kernelState(t, l); got != want {
			t.Fatalf("restart %d (after %v): state differs:\n--- got\n%s\n--- want\n%s", i+1, sig, got, want)
		}
	}
	d.stop(syscall.SIGTERM)
	if got := kernelState(t, l); got != "" {
		t.Errorf("after the final SIGTERM:\n%s", got)
	}
}

// openFiles counts the daemon's file descriptors.
func openFiles(pid int) int {
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(ents)
}

func threads(pid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	m := regexp.MustCompile(`(?m)^Threads:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestFlapStormDrill: a thousand carrier flaps of uplink 1 within a
// minute, plus maintenance toggles through D-Bus: the daemon stays up,
// its open files and threads stay bounded, the final state is right
// within a second of the storm ending, and a stream pinned to uplink 2
// loses nothing.
func TestFlapStormDrill(t *testing.T) {
	l := newLab(t, 2)
	d, s := startWithStream(t, l)
	pid := d.proc.Pid()
	fds0, thr0 := openFiles(pid), threads(pid)
	start := time.Now()
	for i := 0; i < 1000; i++ {
		if err := l.SetCarrier(1, i%2 == 1); err != nil {
			t.Fatal(err)
		}
		if i%100 == 50 {
			d.cli(0, "down", "isp1")
			d.cli(0, "up", "isp1")
		}
	}
	l.SetCarrier(1, true)
	stormEnd := time.Now()
	t.Logf("1000 carrier flaps in %v; fds %d -> %d, threads %d -> %d", stormEnd.Sub(start).Round(time.Millisecond),
		fds0, openFiles(pid), thr0, threads(pid))
	if d.proc.Exited() {
		t.Fatal("wanpin died in the storm")
	}
	for {
		out, _ := l.Exec(l.Router, "nft", "list", "chain", "inet", "wanpin", "bal_default_chain")
		if strings.Contains(out, "mark_isp1") && strings.Contains(out, "mark_isp2") {
			break
		}
		if time.Since(stormEnd) > time.Second {
			t.Fatalf("state not right a second after the storm:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fds := openFiles(pid); fds > fds0+5 {
		t.Errorf("open files grew from %d to %d", fds0, fds)
	}
	if thr := threads(pid); thr > thr0+8 {
		t.Errorf("threads grew from %d to %d", thr0, thr)
	}
	if why := stillFlowing(s); why != "" || l.ISPOf(s.Peer()) != 2 {
		t.Errorf("the stream on uplink 2 suffered: %q, peer %s", why, s.Peer())
	}
	if counts, err := l.CurlMany(40); err != nil || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("after the storm: %v %v", counts, err)
	}
}
