package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/wanpin/wanpin/internal/netlab"
)

// TestExplainMatchesKernel draws a few hundred random new connections,
// forwarded and the router's own, IPv4 and IPv6, matching policies and
// not, and sends each through the lab. The uplink the kernel really used
// (the server sees the uplink's address) must be one that `wanpin
// explain` gives a chance above zero, and per kind of flow the observed
// shares must match explain's within a binomial tolerance: one policy
// semantics for the nftables rules and for explain.
func TestExplainMatchesKernel(t *testing.T) {
	l := newLab(t, 2)
	// A second IPv6 address on the LAN host, for the source policy.
	run(t, l, l.LAN, "ip", "-6", "addr", "add", "2001:db8:1::20/64", "dev", "eth0", "nodad")
	d := startWanpin(t, l, fmt.Sprintf(twoUplinks, 3, 1)+`
[[policy]]
name = "by-user"
users = ["4242"]
uplinks = ["isp2"]

[[policy]]
name = "by-source"
sources = ["192.0.2.20/32", "2001:db8:1::20/128"]
uplinks = ["isp2"]

[[policy]]
name = "alt-udp"
destinations = ["`+netlab.ServerAlt4+`/32", "`+netlab.ServerAlt6+`/128"]
protocol = "udp"
uplinks = ["isp1"]
`)
	type flow struct {
		local    bool
		uid      int
		src, dst string
		proto    string
		v6       bool
	}
	rng := rand.New(rand.NewPCG(11, 12))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	var flows []flow
	for range 320 {
		f := flow{v6: rng.IntN(2) == 0, proto: pick("tcp", "tcp", "tcp", "udp")}
		f.local = rng.IntN(10) < 3
		if f.v6 {
			f.dst = pick(netlab.ServerAddr6, netlab.ServerAlt6)
		} else {
			f.dst = pick(netlab.ServerAddr4, netlab.ServerAlt4)
		}
		switch {
		case f.local:
			f.uid = []int{0, 4242}[rng.IntN(2)]
		case f.v6:
			f.src = pick(netlab.LANHost6, netlab.LANHost6, "2001:db8:1::20")
		default:
			f.src = pick(netlab.LANHost4, netlab.LANHost4, netlab.LANHostAlt4)
		}
		flows = append(flows, f)
	}
	port := func(f flow) string {
		if f.proto == "udp" {
			return fmt.Sprint(netlab.PortUDP)
		}
		return fmt.Sprint(netlab.PortWhoami)
	}
	// explain, once per kind of flow: the daemon's answer is the same for
	// every flow of one kind.
	type chances map[string]float64
	explained := map[string]chances{}
	explain := func(f flow) chances {
		key := fmt.Sprintf("%v %d %s %s %s", f.local, f.uid, f.src, f.dst, f.proto)
		if c, ok := explained[key]; ok {
			return c
		}
		args := []string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + d.busAddr, wanpinBin, "explain", "--json",
			"--dst", f.dst, "--proto", f.proto, "--dport", port(f)}
		if f.local {
			args = append(args, "--uid", fmt.Sprint(f.uid))
		} else {
			args = append(args, "--src", f.src, "--iif", "lan0")
		}
		var res struct {
			FromDaemon bool `json:"from_daemon"`
			Uplinks    []struct {
				Uplink string  `json:"uplink"`
				Share  float64 `json:"share"`
			} `json:"uplinks"`
		}
		out := run(t, l, l.Router, args...)
		if err := json.Unmarshal([]byte(out), &res); err != nil || !res.FromDaemon {
			t.Fatalf("explain %s: %v (from daemon %v)\n%s", key, err, res.FromDaemon, out)
		}
		c := chances{}
		for _, u := range res.Uplinks {
			c[u.Uplink] += u.Share
		}
		explained[key] = c
		return c
	}
	// send makes one new connection and says through which ISP the
	// server saw it.
	send := func(f flow) int {
		host := f.dst
		if f.v6 {
			host = "[" + f.dst + "]"
		}
		ns := l.LAN
		var prefix []string
		if f.local {
			ns = l.Router
			if f.uid != 0 {
				prefix = []string{"setpriv", fmt.Sprintf("--reuid=%d", f.uid), fmt.Sprintf("--regid=%d", f.uid), "--clear-groups"}
			}
		}
		var args []string
		if f.proto == "tcp" {
			args = []string{"curl", "-sS", "--connect-timeout", "3", "-m", "5", fmt.Sprintf("http://%s:%s/", host, port(f))}
			if !f.local {
				args = append(args, "--interface", f.src)
			}
		} else {
			bind := ""
			if !f.local {
				bind = ",bind=" + f.src
				if f.v6 {
					bind = ",bind=[" + f.src + "]"
				}
			}
			args = []string{"sh", "-c", fmt.Sprintf("echo ping | socat -t 0.2 -T 1 - UDP:%s:%s%s", host, port(f), bind)}
		}
		out := run(t, l, ns, append(prefix, args...)...)
		addr := strings.TrimSpace(out)
		if net.ParseIP(addr) == nil {
			t.Fatalf("flow %+v: no answer: %q", f, out)
		}
		return l.ISPOf(addr)
	}
	type tally struct {
		c     chances
		n     int
		count map[string]int
	}
	byKind := map[string]*tally{}
	for _, f := range flows {
		c := explain(f)
		isp := send(f)
		up := fmt.Sprintf("isp%d", isp)
		if c[up] <= 0 {
			t.Errorf("flow %+v left by %s; explain gives %v", f, up, c)
		}
		key := fmt.Sprintf("%v %d %s %s %s", f.local, f.uid, f.src, f.dst, f.proto)
		tl := byKind[key]
		if tl == nil {
			tl = &tally{c: c, count: map[string]int{}}
			byKind[key] = tl
		}
		tl.n++
		tl.count[up]++
	}
	checked := 0
	for key, tl := range byKind {
		for up, p := range tl.c {
			if p <= 0 || p >= 1 {
				continue
			}
			// A binomial count: within 4 standard deviations (and one
			// flow), which a correct share fails about once in 15,000.
			mean, sd := float64(tl.n)*p, math.Sqrt(float64(tl.n)*p*(1-p))
			if got := float64(tl.count[up]); math.Abs(got-mean) > 4*sd+1 {
				t.Errorf("%s: %s took %v of %d flows, explain says %.0f%%", key, up, got, tl.n, p*100)
			}
			checked++
		}
	}
	if checked < 4 {
		t.Errorf("only %d balanced shares were checked: too few flows of balanced kinds", checked)
	}
	t.Logf("%d flows of %d kinds; %d balanced shares checked", len(flows), len(byKind), checked)
}
