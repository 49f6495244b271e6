package main

// The per-lookup accounting (-only accounting): what each piece of a
// forwarded packet's path costs, nftables expressions, the ip rule walk
// and the FIB lookups, measured on the 64-byte established flows of the
// datapath benchmark.
//
// One trafgen runs for the whole measurement; the router's rules are
// switched under it, variant after variant, each counted over a short
// window, the order rotated every round. A variant's cost is the time a
// packet takes with it less the time with the bare masquerade, per
// round (1/rate - 1/rate_bare); the costs of two variants that differ
// in one piece differ by that piece's cost. Switching every few hundred
// milliseconds leaves the shared machine's slower swings out of every
// difference. The flows' conntrack entries carry uplink 1's ct mark
// (0x01000000, wanpin's default) from the start, so that every variant
// finds the state its rules expect: classic's and the hand-written
// variants use the same mark.

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// acVariant is one router setup: shell run in the router namespace to
// set it up and to take it down again.
type acVariant struct {
	name     string
	up, down string
}

const (
	acMark  = "0x01000000"
	acMask  = "0x7f000000"
	acTable = "301"
)

// acBare is every variant's base: the masquerade of the "no rules"
// configuration.
const acBare = `nft add table ip bare
nft add chain ip bare nat '{ type nat hook postrouting priority srcnat; }'
nft add rule ip bare nat oifname wan1 masquerade
`

const acBareDown = "nft delete table ip bare\n"

// acUplinkTable routes uplink 1 in its own table, for the variants that
// mark.
func acUplinkTable() string {
	return fmt.Sprintf("ip route add default via %s dev wan1 table %s\n", netlab.UplinkGateway4(1), acTable)
}

// acVariants lists the variants; wanpinUp and wanpinDown are a
// wanpinSnapshot's.
func acVariants(wanpinUp, wanpinDown string) []acVariant {
	mark := func(stmt string) string {
		return fmt.Sprintf("nft add table ip mk\nnft add chain ip mk pre '{ type filter hook prerouting priority mangle; }'\nnft add rule ip mk pre %s\n", stmt)
	}
	const markDown = "nft delete table ip mk\n"
	fwmark := fmt.Sprintf("ip rule add prio 1101 fwmark %s/%s table %s\n", acMark, acMask, acTable)
	fwmarkDown := fmt.Sprintf("ip rule del prio 1101\nip route flush table %s\n", acTable)
	suppress := "ip rule add prio 1000 lookup main suppress_prefixlength 0\n"
	suppressDown := "ip rule del prio 1000\n"
	// A mark set by `meta mark set meta mark & ~M | X`, as wanpin's mark
	// chains do, reached through the restore map.
	restore := fmt.Sprintf(`nft -f - <<'EOF'
table ip mk {
	map restore { type mark : verdict; elements = { %s : goto m }; }
	chain m { meta mark set meta mark & 0x80ffffff | %[1]s; }
	chain pre { type filter hook prerouting priority mangle; ct mark & %[2]s vmap @restore; }
}
EOF
`, acMark, acMask)
	// The same restore keyed by the connection's direction too.
	restoreDir := fmt.Sprintf(`nft -f - <<'EOF'
table ip mk {
	map restore { type ct_dir . mark : verdict; elements = { original . %s : goto m }; }
	chain m { meta mark set meta mark & 0x80ffffff | %[1]s; }
	chain pre { type filter hook prerouting priority mangle; ct direction . ct mark & %[2]s vmap @restore; }
}
EOF
`, acMark, acMask)
	// Ten rules of one comparison that never match.
	var ten strings.Builder
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&ten, "nft add rule ip mk pre meta mark 0x%x\n", 0x7e0000+i)
	}
	// postrouting pieces, after the marked restore
	post := func(rules string) string {
		return "nft add chain ip mk post '{ type filter hook postrouting priority mangle; }'\n" + rules
	}
	guardConcat := post(`nft add map ip mk guard '{ type mark . ifname : verdict; }'
nft add element ip mk guard '{ 0x02000000 . "wan1" : drop, 0x01000000 . "wan2" : drop }'
nft add rule ip mk post ct mark and 0x7f000000 . oifname vmap @guard
`)
	countOut := post(`nft add chain ip mk cnt
nft add rule ip mk cnt counter
nft add map ip mk count_out '{ type ifname : verdict; elements = { "wan1" : jump cnt, "wan2" : jump cnt } }'
nft add rule ip mk post oifname vmap @count_out
`)
	ifnameMiss := `nft add map ip mk count_in '{ type ifname : verdict; elements = { "wan1" : accept, "wan2" : accept } }'
nft insert rule ip mk pre iifname vmap @count_in
`
	classic := fmt.Sprintf(`nft -f - <<'EOF'
table ip classic {
	chain pre { type filter hook prerouting priority mangle; policy accept; iifname "lan0" meta mark set ct mark; }
	chain post { type filter hook postrouting priority mangle; policy accept;
		ct state new oifname "wan1" ct mark set %s
		ct state new oifname "wan2" ct mark set 0x02000000
	}
}
EOF
`, acMark)
	vs := []acVariant{
		{"bare: one masquerade, no ip rules", acBare, acBareDown},
		{"+ an ip rule that never matches (the FIB rules walk)", acBare + "ip rule add prio 1100 fwmark 0x7e000000/0x7f000000 table 302\n", acBareDown + "ip rule del prio 1100\n"},
		{"+ mark set from the LAN (meta mark set), fwmark rule: local, uplink table", acBare + acUplinkTable() + fwmark + mark(`iifname "lan0" meta mark set `+acMark), acBareDown + fwmarkDown + markDown},
		{"+ suppress rule first: local, main, uplink table", acBare + acUplinkTable() + fwmark + suppress + mark(`iifname "lan0" meta mark set `+acMark), acBareDown + fwmarkDown + suppressDown + markDown},
		{"mark by the restore map (ct mark vmap, masked set)", acBare + acUplinkTable() + fwmark + restore, acBareDown + fwmarkDown + markDown},
		{"mark by the restore map keyed by ct direction too", acBare + acUplinkTable() + fwmark + restoreDir, acBareDown + fwmarkDown + markDown},
		{"restore map + 10 one-comparison rules", acBare + acUplinkTable() + fwmark + restore + ten.String(), acBareDown + fwmarkDown + markDown},
		{"restore map + iifname vmap miss before it", acBare + acUplinkTable() + fwmark + restore + ifnameMiss, acBareDown + fwmarkDown + markDown},
		{"restore map + postrouting guard: ct mark . oifname vmap", acBare + acUplinkTable() + fwmark + restore + guardConcat, acBareDown + fwmarkDown + markDown},
		{"restore map + postrouting oifname vmap, jump to a counter", acBare + acUplinkTable() + fwmark + restore + countOut, acBareDown + fwmarkDown + markDown},
		{"classic CONNMARK recipe", acBare + acUplinkTable() + fwmark + classic, acBareDown + fwmarkDown + "nft delete table ip classic\n"},
		{"wanpin's table and rules as it loads them", wanpinUp, wanpinDown},
		// What the suppress rule's main-table lookup costs a marked
		// packet in wanpin's own rule list.
		{"wanpin's table and rules without the suppress rule",
			dropLines(wanpinUp, "suppress_prefixlength"), dropLines(wanpinDown, "prio "+suppressPrio(wanpinUp)+"\n")},
	}
	return vs
}

// dropLines is script without the lines containing s.
func dropLines(script, s string) string {
	var keep []string
	for _, line := range strings.SplitAfter(script, "\n") {
		if !strings.Contains(line, s) {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "")
}

// wanpinSnapshot runs wanpin once and returns shell that loads its table
// and ip rules again without it (the daemon plays no part per packet)
// and shell that removes them.
func wanpinSnapshot(l *netlab.Lab, bin, dir string) (up, down string, err error) {
	stop, err := startWanpin(l, bin, dir, wanpinConfig(2, 1))
	if err != nil {
		return "", "", err
	}
	table, err := l.Exec(l.Router, "nft", "list", "table", "inet", "wanpin")
	if err != nil {
		stop()
		return "", "", fmt.Errorf("%w: %s", err, table)
	}
	rules, err := l.Exec(l.Router, "ip", "-4", "rule", "show")
	if err != nil {
		stop()
		return "", "", fmt.Errorf("%w: %s", err, rules)
	}
	routes, err := l.Exec(l.Router, "ip", "-4", "route", "show", "table", "all")
	stop()
	if err != nil {
		return "", "", fmt.Errorf("%w: %s", err, routes)
	}
	// An owned table would go with the nft process that loads it.
	table = regexp.MustCompile(`(?m)^\s*flags .*\n`).ReplaceAllString(table, "")
	var b, d strings.Builder
	fmt.Fprintf(&b, "nft -f - <<'EOF'\n%sEOF\n", table)
	d.WriteString("nft delete table inet wanpin\n")
	tables := map[string]bool{}
	for _, line := range strings.Split(rules, "\n") {
		prio, rest, ok := strings.Cut(line, ":")
		if !ok || prio == "0" || prio == "32766" || prio == "32767" {
			continue
		}
		fmt.Fprintf(&b, "ip rule add prio %s %s\n", prio, strings.TrimSpace(rest))
		fmt.Fprintf(&d, "ip rule del prio %s\n", prio)
		f := strings.Fields(rest)
		for i := range f {
			if f[i] == "lookup" && i+1 < len(f) && f[i+1] != "main" {
				tables[f[i+1]] = true
			}
		}
	}
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		for i := range f {
			if f[i] == "table" && i+1 < len(f) && tables[f[i+1]] {
				fmt.Fprintf(&b, "ip route add %s\n", line)
			}
		}
	}
	for t := range tables {
		fmt.Fprintf(&d, "ip route flush table %s\n", t)
	}
	return b.String(), d.String(), nil
}

// suppressPrio is the priority of the suppress rule in a wanpinSnapshot.
func suppressPrio(up string) string {
	for _, line := range strings.Split(up, "\n") {
		if f := strings.Fields(line); strings.Contains(line, "suppress_prefixlength") && len(f) > 4 {
			return f[4]
		}
	}
	return "none"
}

func runAccounting(bin string, rounds int, window time.Duration) error {
	begin := time.Now()
	dir, bin, l, done, err := benchLab(bin, 2)
	if err != nil {
		return err
	}
	defer done()
	d := &datapath{l: l, dir: dir, window: window, verbose: *verbose}
	if err := d.start(); err != nil {
		return err
	}
	defer d.stop()
	wup, wdown, err := wanpinSnapshot(l, bin, dir)
	if err != nil {
		return fmt.Errorf("wanpin's table: %w", err)
	}
	variants := acVariants(wup, wdown)
	sh := func(script string) error {
		if script == "" {
			return nil
		}
		out, err := l.Exec(l.Router, "sh", "-ec", script)
		if err != nil {
			return fmt.Errorf("%w: %s\n%s", err, out, script)
		}
		return nil
	}
	// Every variant once, to see it load and unload.
	for _, v := range variants {
		if err := sh(v.up); err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		if err := sh(v.down); err != nil {
			return fmt.Errorf("%s (down): %w", v.name, err)
		}
	}
	if err := d.flushConntrack(); err != nil {
		return err
	}
	// The flows' entries, made under the bare masquerade, pinned to
	// uplink 1 as wanpin's postrouting would.
	warm := acBare + "nft add chain ip bare pin '{ type filter hook postrouting priority mangle; }'\n" +
		"nft add rule ip bare pin oifname wan1 ct mark set " + acMark + "\n"
	if err := sh(warm); err != nil {
		return err
	}
	if err := d.warmFlows(); err != nil {
		return err
	}
	if err := sh(acBareDown); err != nil {
		return err
	}
	if out, err := l.Exec(l.Server, "nft", fmt.Sprintf(
		"add table ip sinkest; add chain ip sinkest pre { type filter hook prerouting priority -300; }; add rule ip sinkest pre ip daddr %s udp dport %d drop",
		netlab.ServerAddr4, netlab.PortUDP)); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	defer l.Exec(l.Server, "nft", "delete", "table", "ip", "sinkest")

	var frames strings.Builder
	for _, p := range flowPorts {
		frames.WriteString(d.frame(fmt.Sprint(p), fmt.Sprint(netlab.PortUDP)))
	}
	path := dir + "/accounting.trafgen"
	if err := os.WriteFile(path, []byte(frames.String()), 0o644); err != nil {
		return err
	}
	p, err := l.Start(l.LAN, dir+"/trafgen.log", "ip", "netns", "exec", l.LAN,
		"trafgen", "-i", path, "-o", "eth0", "-P", "1", "--no-sock-mem", "--notouch-irq")
	if err != nil {
		return err
	}
	defer func() {
		syscall.Kill(-p.Pid(), syscall.SIGINT)
		p.Wait(5 * time.Second)
		p.Close()
	}()

	// ns[v][round]: nanoseconds a packet took with variant v.
	ns := make([][]float64, len(variants))
	// cpu[v][round]: CPU nanoseconds per packet (steal left out).
	cpu := make([][]float64, len(variants))
	for r := 0; r < rounds; r++ {
		for k := range variants {
			i := (r + k) % len(variants)
			v := variants[i]
			if err := sh(v.up); err != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond)
			n0, err := d.rxPackets()
			t0, c0 := time.Now(), cpuTimes()
			if err != nil {
				return err
			}
			time.Sleep(window)
			n1, err := d.rxPackets()
			t1, c1 := time.Now(), cpuTimes()
			if err != nil {
				return err
			}
			if err := sh(v.down); err != nil {
				return err
			}
			if n1 == n0 {
				return fmt.Errorf("%s: no packets arrived", v.name)
			}
			ns[i] = append(ns[i], t1.Sub(t0).Seconds()*1e9/float64(n1-n0))
			cpu[i] = append(cpu[i], busyNanos(c0, c1)/float64(n1-n0))
			if p.Exited() {
				b, _ := os.ReadFile(dir + "/trafgen.log")
				return fmt.Errorf("trafgen exited: %s", b)
			}
		}
		if *verbose {
			fmt.Fprintf(os.Stderr, "round %d/%d: %.0f\n", r+1, rounds, ns[0][len(ns[0])-1])
		}
	}
	fmt.Printf("per-lookup accounting, %d rounds of %v per variant, 64-byte UDP, 4 established flows\n", rounds, window)
	fmt.Printf("%-62s %7s %8s %16s %8s %16s\n", "variant", "kpps", "ns/pkt", "+ns (interval)", "cpu ns", "+cpu ns")
	for i, v := range variants {
		var extra, extraCPU []float64
		for r := range ns[i] {
			extra = append(extra, ns[i][r]-ns[0][r])
			extraCPU = append(extraCPU, cpu[i][r]-cpu[0][r])
		}
		lo, hi, _ := medianInterval(extra, 0.95)
		clo, chi, _ := medianInterval(extraCPU, 0.95)
		fmt.Printf("%-62s %7.1f %8.0f %16s %8.0f %16s\n", v.name, 1e6/median(ns[i]), median(ns[i]),
			fmt.Sprintf("%.0f (%.0f..%.0f)", median(extra), lo, hi), median(cpu[i]),
			fmt.Sprintf("%.0f (%.0f..%.0f)", median(extraCPU), clo, chi))
	}
	fmt.Printf("\nrun took %v\n", time.Since(begin).Round(time.Second))
	return nil
}
