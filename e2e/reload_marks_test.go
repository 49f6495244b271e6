package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// streamPolicy pins the lab's stream port to isp2, as startWithStream's
// file does.
const streamPolicy = `
[[policy]]
name = "stream"
protocol = "tcp"
ports = ["8082"]
uplinks = ["isp2"]
`

// TestReloadMaskKeepsPins: a download pinned to isp2 goes on through a
// reload that moves wanpin's marks to other bits (mark_mask), its
// conntrack entry carrying isp2's new mark and no bit of the old mask.
// Before the repin the new table did not know the old mark: the ACKs
// followed the main table out of wan1 with isp2's address, were pinned
// to isp1 there (mark 0x02010000), and ISP 1 dropped them.
func TestReloadMaskKeepsPins(t *testing.T) {
	l := newLab(t, 2)
	d, s := startWithStream(t, l)
	d.writeConfig("mark_mask = 0x00ff0000\n" + fmt.Sprintf(twoUplinks, 1, 1) + streamPolicy)
	reloadKeepsStream(t, l, d, s, 0x00020000, 0x00ff0000|0x7f000000)
}

// TestReloadSwapKeepsPins: the same download through a reload that
// swaps the two uplinks in the file, and with them their marks (an
// uplink's mark comes from its place): isp2's connections get mark 1,
// isp1's mark 2.
func TestReloadSwapKeepsPins(t *testing.T) {
	l := newLab(t, 2)
	d, s := startWithStream(t, l)
	swapped := `
[[uplink]]
name = "isp2"
interface = "wan2"

[[uplink]]
name = "isp1"
interface = "wan1"
` + streamPolicy
	d.writeConfig(swapped)
	reloadKeepsStream(t, l, d, s, 0x01000000, 0x7f000000)
}

// reloadKeepsStream reloads and checks that the stream goes on, that
// its entry's mark & mask is want, and that the daemon said so.
func reloadKeepsStream(t *testing.T, l *netlab.Lab, d *daemon, s *netlab.Stream, want, mask uint32) {
	t.Helper()
	if why := stillFlowing(s); why != "" {
		t.Fatalf("stream before the reload: %s", why)
	}
	if out, code := d.cli(0, "reload"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, out)
	}
	d.waitFor(`msg="conntrack re-marked" uplink=isp2`, 1, 5*time.Second)
	if why := stillFlowing(s); why != "" {
		ct, _ := l.Exec(l.Router, "sh", "-c", "conntrack -L -p tcp --dport 8082 2>/dev/null")
		t.Fatalf("stream after the reload: %s; conntrack:\n%s", why, ct)
	}
	// The entry of the stream (its reply comes from isp2's side), read
	// with the stream still going: its mark is isp2's new one.
	var marks []string
	waitUntil(t, 5*time.Second, "the stream's entry with isp2's new mark", func() (bool, string) {
		ct, _ := l.Exec(l.Router, "sh", "-c", "conntrack -L -p tcp --dport 8082 2>/dev/null")
		marks = marks[:0]
		for _, line := range strings.Split(ct, "\n") {
			if !strings.Contains(line, "ESTABLISHED") {
				continue
			}
			i := strings.Index(line, "mark=")
			if i < 0 {
				continue
			}
			var m uint32
			fmt.Sscanf(strings.Fields(line[i:])[0], "mark=%d", &m)
			marks = append(marks, fmt.Sprintf("%#x", m))
			if m&mask != want {
				return false, ct
			}
		}
		return len(marks) > 0, ct
	})
	log := d.log()
	i := strings.Index(log, `msg="conntrack re-marked" uplink=isp2`)
	line := log[i:]
	line = line[:strings.IndexByte(line, '\n')]
	t.Logf("marks of the stream's entries: %v; %s", marks, line)
	if strings.Contains(line, "entries=0 ") {
		t.Errorf("isp2's connections not counted: %s", line)
	}
}
