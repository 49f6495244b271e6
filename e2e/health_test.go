package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// healthConfig is two uplinks, isp2 the backup (tier 2), each probing the
// same targets with the default health settings.
func healthConfig(targets ...string) string {
	list := `"` + strings.Join(targets, `", "`) + `"`
	return fmt.Sprintf(`
[[uplink]]
name = "isp1"
interface = "wan1"

[uplink.health]
targets = [%[1]s]

[[uplink]]
name = "isp2"
interface = "wan2"
tier = 2

[uplink.health]
targets = [%[1]s]
`, list)
}

// TestBlackhole: the ISP behind uplink 1 silently drops everything while
// the link stays up. With the default health settings, new connections
// stop using uplink 1 and a running UDP flow moves to uplink 2; when the
// ISP forwards again, uplink 1 takes new connections after up_after and
// hold_down.
func TestBlackhole(t *testing.T) {
	l := newLab(t, 2)
	d := startWanpin(t, l, healthConfig("203.0.113.10", "203.0.113.11"))
	started := time.Now()
	f, err := l.StartUDPFlow(40002, netlab.ServerAddr4, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if a := waitAnswers(t, f, 1, started, "the UDP flow before the failure"); l.ISPOf(a[len(a)-1].Seen) != 1 {
		t.Fatalf("UDP flow before the failure: %v", a)
	}
	// The ISP fails once uplink 1's probes have had answers.
	waitUntil(t, 5*time.Second, "an answered probe round of isp1", func() (bool, string) {
		u := statusOf(t, d).Uplinks[0]
		return u.RTTms > 0, fmt.Sprintf("rtt %v ms, loss %v", u.RTTms, u.Loss)
	})
	start := time.Now()
	if err := l.Blackhole(1, true); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink down" uplink=isp1`, 1, 5*time.Second)
	detect := time.Since(start)
	t.Logf("blackhole noticed after %v", detect.Round(time.Millisecond))
	if !regexp.MustCompile(`uplink down" uplink=isp1 .*reason="health probes: 2 rounds lost: 203.0.113.10 timeout, 203.0.113.11 timeout"`).MatchString(d.log()) {
		t.Errorf("no readable reason in the log:\n%s", d.log())
	}
	if counts, err := l.CurlMany(20); err != nil || counts[2] != 20 {
		t.Errorf("new connections during the blackhole: %v %v", counts, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		a := f.Answers()
		if len(a) > 0 && l.ISPOf(a[len(a)-1].Seen) == 2 && time.Since(a[len(a)-1].At) < 200*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the UDP flow did not move to ISP 2")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := d.cli(0, "status")
	if !strings.Contains(out, "health probes: 2 rounds lost") {
		t.Errorf("status does not say why:\n%s", out)
	}
	// Recovery: three good rounds and the 2 s hold-down.
	back := time.Now()
	if err := l.Blackhole(1, false); err != nil {
		t.Fatal(err)
	}
	d.waitFor(`uplink up" uplink=isp1`, 2, 8*time.Second)
	took := time.Since(back)
	t.Logf("uplink 1 back after %v", took.Round(time.Millisecond))
	if took < 2*time.Second {
		t.Errorf("uplink 1 came back after %v, before the 2 s hold-down", took)
	}
	if counts, err := l.CurlMany(20); err != nil || counts[1] != 20 {
		t.Errorf("new connections after recovery: %v %v", counts, err)
	}
}

// TestProbesUseTheirUplink: uplink 1's probes are seen only at ISP 1 and
// uplink 2's only at ISP 2, although a policy sends all traffic to the
// server's network through uplink 2 and the weights favour uplink 1.
func TestProbesUseTheirUplink(t *testing.T) {
	l := newLab(t, 2)
	cfg := `
[[uplink]]
name = "isp1"
interface = "wan1"
weight = 10

[uplink.health]
targets = ["203.0.113.10"]

[[uplink]]
name = "isp2"
interface = "wan2"

[uplink.health]
targets = ["203.0.113.11"]

[[policy]]
name = "all-to-isp2"
destinations = ["203.0.113.0/24"]
uplinks = ["isp2"]
`
	for i := 1; i <= 2; i++ {
		run(t, l, l.ISP(i), "nft", "add", "chain", "inet", "isp", "probes", "{ type filter hook prerouting priority -310; }")
		for _, dst := range []string{"203.0.113.10", "203.0.113.11"} {
			run(t, l, l.ISP(i), "nft", "add", "rule", "inet", "isp", "probes", "ip", "daddr", dst, "icmp", "type", "echo-request", "counter")
		}
	}
	startWanpin(t, l, cfg)
	started := time.Now()
	count := func(isp int, dst string) int {
		out := run(t, l, l.ISP(isp), "nft", "list", "chain", "inet", "isp", "probes")
		m := regexp.MustCompile(regexp.QuoteMeta(dst) + ` icmp type echo-request counter packets (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter for %s:\n%s", dst, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	// Each ISP has seen 4 probes of its own uplink, the rounds of 2 s at
	// the default 500 ms interval (and more than the 3 the test needs).
	var own1, own2 int
	waitUntil(t, 10*time.Second, "4 probes of each uplink at its own ISP", func() (bool, string) {
		own1, own2 = count(1, "203.0.113.10"), count(2, "203.0.113.11")
		return own1 >= 4 && own2 >= 4, fmt.Sprintf("%d at ISP 1, %d at ISP 2", own1, own2)
	})
	elapsed := time.Since(started)
	wrong1, wrong2 := count(1, "203.0.113.11"), count(2, "203.0.113.10")
	t.Logf("probes at ISP 1: %d own, %d of uplink 2; at ISP 2: %d own, %d of uplink 1, in %v",
		own1, wrong1, own2, wrong2, elapsed.Round(time.Millisecond))
	if wrong1 != 0 || wrong2 != 0 {
		t.Errorf("probes left through the wrong uplink")
	}
	// At most 10 probe packets a second per uplink with the defaults.
	if rate := float64(own1) / elapsed.Seconds(); rate > 10 {
		t.Errorf("%.1f probes/s on uplink 1", rate)
	}
}

// TestEveryOtherRoundLost: ISP 1 drops every other probe (exactly: nft's
// numgen alternates) and answers the rest. The uplink neither goes down
// nor flaps.
func TestEveryOtherRoundLost(t *testing.T) {
	l := newLab(t, 2)
	run(t, l, l.ISP(1), "nft", "add", "chain", "inet", "isp", "half", "{ type filter hook prerouting priority -320; }")
	run(t, l, l.ISP(1), "nft", "add", "rule", "inet", "isp", "half", "iifname", "cust", "icmp", "type", "echo-request", "numgen", "inc", "mod", "2", "0", "counter", "drop")
	d := startWanpin(t, l, `
[[uplink]]
name = "isp1"
interface = "wan1"

[uplink.health]
targets = ["203.0.113.10"]

[[uplink]]
name = "isp2"
interface = "wan2"
`)
	// Until 7 probes are dropped: then at least 13 rounds have started
	// and the first 12 have been judged (within the 400 ms timeout, so
	// before the next round starts), the rounds of 6 s at the default
	// 500 ms interval.
	dropped := 0
	took := waitUntil(t, 15*time.Second, "7 probes dropped by ISP 1", func() (bool, string) {
		out := run(t, l, l.ISP(1), "nft", "list", "chain", "inet", "isp", "half")
		m := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter in ISP 1's chain:\n%s", out)
		}
		dropped, _ = strconv.Atoi(m[1])
		return dropped >= 7, out
	})
	t.Logf("%d probes dropped in %v", dropped, took.Round(time.Millisecond))
	if strings.Contains(d.log(), `uplink down" uplink=isp1`) {
		t.Errorf("uplink 1 went down although every other round was answered:\n%s", d.log())
	}
}
