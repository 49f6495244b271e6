// Package booted runs wanpin as users do: the .deb from
// packaging/deb/build.sh installed with dpkg on a booted Debian 12 whose
// systemd runs wanpin.service, with the real system bus and journald.
// The booted system is the lab's router (internal/netlab's Boot): its
// uplinks lead to the lab's ISPs, its LAN to the lab's LAN host.
//
// One boot serves every step, in order, each asserting what a user
// would see; a step relies on what the ones before it left.
package booted

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

const config = `# the booted lab router
[[uplink]]
name = "isp1"
interface = "wan1"
weight = %d
[uplink.health]
method = "icmp"
targets = ["203.0.113.10"]

[[uplink]]
name = "isp2"
interface = "wan2"
weight = 1
[uplink.health]
method = "tcp"
targets = ["203.0.113.10:%d"]

[[uplink]]
name = "isp3"
interface = "wan3"
weight = 1
`

type router struct {
	t *testing.T
	l *netlab.Lab
	b *netlab.Booted
}

// sh runs a shell script in the booted system as root and fails the
// test on error.
func (r *router) sh(script string) string {
	r.t.Helper()
	out, err := r.b.Exec("sh", "-ec", script)
	if err != nil {
		r.t.Fatalf("%v\n%s\n%s", err, script, out)
	}
	return out
}

// try runs a shell script and returns its output and error.
func (r *router) try(script string) (string, error) { return r.b.Exec("sh", "-ec", script) }

func (r *router) write(path, content string) {
	r.t.Helper()
	p := filepath.Join(r.b.Root(), path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// journal is wanpin.service's journal since the unit's latest start
// (of this boot, in short-unix format).
func (r *router) journal() string {
	out, err := r.b.Exec("journalctl", "-u", "wanpin", "-b", "--no-pager", "-o", "cat")
	if err != nil {
		return fmt.Sprintf("journalctl: %v: %s", err, out)
	}
	return out
}

// waitJournal waits for the journal to contain re, counted n times.
func (r *router) waitJournal(re string, n int, within time.Duration) string {
	r.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(within)
	for {
		j := r.journal()
		if len(rx.FindAllString(j, -1)) >= n {
			return j
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %d× %q in wanpin's journal within %v:\n%s", n, re, within, j)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *router) mainPID() string {
	return strings.TrimSpace(r.sh("systemctl show -p MainPID --value wanpin"))
}

// wanpinObjects is what wanpin has in the kernel: its table, its rules
// (priority block 10000-10999, protocol 119), its routes (protocol 119).
func (r *router) wanpinObjects() string {
	return r.sh(`nft list tables | grep wanpin || true
ip rule show | awk -F: '$1 >= 10000 && $1 < 11000' || true
ip -6 rule show | awk -F: '$1 >= 10000 && $1 < 11000' || true
ip route show table all proto 119 || true
ip -6 route show table all proto 119 || true`)
}

func TestBootedRouter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: boots Debian in a network namespace")
	}
	for _, bin := range []string{"debootstrap", "systemd-nspawn", "dpkg-deb"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", bin)
		}
	}
	begin := time.Now()
	debDir := t.TempDir()
	out, err := exec.Command("../../packaging/deb/build.sh", "0.0.0~booted", debDir).CombinedOutput()
	if err != nil {
		t.Fatalf("building the .deb: %v\n%s", err, out)
	}
	deb := strings.TrimSpace(string(out))
	netlab.Sweep()
	// Uplinks 2 and 3 by DHCP from their ISP's dnsmasq: systemd-networkd
	// in the booted system is uplink 2's client, isc-dhcp-client with
	// Debian's dhclient-script uplink 3's.
	l, err := netlab.New(netlab.Options{ISPs: 3, DHCP: []int{2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	b, err := l.Boot()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("booted in %v (root file system and .deb included)", time.Since(begin).Round(time.Millisecond))
	r := &router{t: t, l: l, b: b}
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.Root(), "root/wanpin.deb"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		run  func(r *router)
	}{
		{"install", stepInstall},
		{"networkd lease", stepNetworkdLease},
		{"enable --now", stepEnable},
		{"dhclient lease", stepDhclient},
		{"status", stepStatus},
		{"http and dns probes", stepProbes},
		{"reload", stepReload},
		{"bus", stepBus},
		{"exec cleanup", stepExec},
		{"hooks", stepHooks},
		{"ppp hooks", stepPPP},
		{"metrics", stepMetrics},
		{"reload without the bus", stepReloadNoBus},
		{"networkd restart", stepNetworkdRestart},
		{"watchdog", stepWatchdog},
		{"sigkill", stepKill},
		{"domains", stepDomains},
		{"quota state", stepQuota},
		{"stop", stepStop},
		{"purge", stepPurge},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			r.t = t
			s.run(r)
		})
		if !ok {
			t.Logf("wanpin's journal:\n%s", r.journal())
			break
		}
	}
	r.t = t
	t.Logf("all steps in %v", time.Since(begin).Round(time.Millisecond))
}

// The package installs on a minimal Debian with only its dependencies.
func stepInstall(r *router) {
	r.sh("dpkg -i /root/wanpin.deb")
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 3, netlab.PortWhoami))
}

// enable --now returns once the daemon has applied its state (Type=notify:
// READY=1 after the first apply), and the journal says why each uplink is
// up.
func stepEnable(r *router) {
	r.sh("systemctl enable --now wanpin")
	// Active means applied: the table and the rules are there already.
	objs := r.wanpinObjects()
	if !strings.Contains(objs, "table inet wanpin") || !strings.Contains(objs, "fwmark") {
		r.t.Fatalf("active before the first apply: wanpin's objects are\n%s", objs)
	}
	if st := strings.TrimSpace(r.sh("systemctl is-active wanpin")); st != "active" {
		r.t.Fatalf("is-active: %s", st)
	}
	j := r.waitJournal(`uplink up.*uplink=isp[12]`, 2, 5*time.Second)
	for _, u := range []string{"isp1", "isp2"} {
		if !regexp.MustCompile(`uplink up.*uplink=` + u + `.*reason=`).MatchString(j) {
			r.t.Errorf("no 'uplink up' line with a reason for %s:\n%s", u, j)
		}
	}
	status := r.sh("systemctl status --no-pager -n 20 wanpin || true")
	if !strings.Contains(status, "active (running)") || !strings.Contains(status, "uplink up") {
		r.t.Errorf("systemctl status:\n%s", status)
	}
	// The health probes work under the unit's sandbox: both uplinks get
	// a verdict from their probes (icmp and tcp).
	r.waitJournal(`health probes started`, 2, 5*time.Second)
	// Traffic from the LAN goes through both uplinks.
	got, err := r.l.CurlMany(40)
	if err != nil {
		r.t.Fatal(err)
	}
	if got[1] == 0 || got[2] == 0 {
		r.t.Errorf("40 connections from the LAN: %v, want both ISPs", got)
	}
}

// reload applies a changed file; a broken one is refused with file:line,
// the unit stays active and the state is untouched.
func stepReload(r *router) {
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami))
	r.sh("systemctl reload wanpin")
	r.waitJournal(`configuration reloaded`, 1, 5*time.Second)
	before := r.sh("nft list table inet wanpin")
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami)+"\n[[uplink]]\nname = \"isp3\"\nweight = \"heavy\"\n")
	out, err := r.try("systemctl reload wanpin")
	if err == nil {
		r.t.Errorf("systemctl reload with a broken file succeeded:\n%s", out)
	}
	j := r.waitJournal(`reload rejected`, 1, 5*time.Second)
	if !regexp.MustCompile(`wanpin\.toml:\d+`).MatchString(j) {
		r.t.Errorf("the journal does not name file:line of the broken file:\n%s", j)
	}
	if st := strings.TrimSpace(r.sh("systemctl is-active wanpin")); st != "active" {
		r.t.Errorf("after a refused reload: %s", st)
	}
	if after := r.sh("nft list table inet wanpin"); after != before {
		r.t.Errorf("a refused reload changed the table")
	}
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami))
	r.sh("systemctl reload wanpin")
}

// The system bus with the shipped policy: anyone may read the status,
// only root may change anything, and the refusal says so.
func stepBus(r *router) {
	out, err := r.b.ExecAs("wptest", "wanpin", "status")
	if err != nil || !strings.Contains(out, "isp1") {
		r.t.Errorf("wanpin status as an unprivileged user: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"reload"}, {"down", "isp1"}, {"up", "isp1"}, {"exec", "--uplink", "isp1", "--", "true"}} {
		out, err := r.b.ExecAs("wptest", append([]string{"wanpin"}, args...)...)
		if err == nil || !strings.Contains(out, "permission denied") {
			r.t.Errorf("wanpin %s as an unprivileged user: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Root's wanpin exec runs under the unit's cgroup rules.
	out, err = r.b.Exec("wanpin", "exec", "--uplink", "isp2", "--", "true")
	if err != nil {
		r.t.Errorf("wanpin exec as root: %v\n%s", err, out)
	}
}

// A daemon that stops answering (SIGSTOP) is killed and restarted by
// systemd within WatchdogSec (10 s) + RestartSec (2 s), and the new one
// adopts the kernel state without duplicates.
func stepWatchdog(r *router) { r.restartedAfter("STOP", 25*time.Second) }

// SIGKILL: Restart=on-failure brings it back, with the state as it was.
func stepKill(r *router) { r.restartedAfter("KILL", 15*time.Second) }

// restartedAfter sends the daemon sig and waits for systemd to have a new
// one active within the time given, holding the same kernel objects.
func (r *router) restartedAfter(sig string, within time.Duration) {
	r.t.Helper()
	objs := r.wanpinObjects()
	pid := r.mainPID()
	r.sh("kill -" + sig + " " + pid)
	deadline := time.Now().Add(within)
	for {
		if now := r.mainPID(); now != pid && now != "0" {
			if st, _ := r.try("systemctl is-active wanpin"); strings.TrimSpace(st) == "active" {
				break
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("not restarted within %v of SIG%s:\n%s", within, sig, r.sh("systemctl status --no-pager wanpin || true"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := r.wanpinObjects(); got != objs {
		r.t.Errorf("after the restart that SIG%s caused, wanpin's objects\n%s\nwant\n%s", sig, got, objs)
	}
}

// A domain policy learns under the unit's sandbox (NFLOG and the raw
// sockets that re-inject the held answers need only CAP_NET_ADMIN and
// CAP_NET_RAW): the LAN host asks ISP 3's resolver (a policy sends it
// there: the resolver answers only its customer) for www.example.test;
// the answer, held and re-injected, puts the server's address in the
// policy's set with the name it came from, and reaches the LAN host. The
// DNS probes of uplink 3, sockets bound to wan3, keep working: answers
// for the router itself are never held.
func stepDomains(r *router) {
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami)+fmt.Sprintf(`[uplink.health]
method = "dns"
targets = ["%[1]s"]

[[policy]]
name = "resolver3"
destinations = ["%[1]s/32"]
uplinks = ["isp3"]

[[policy]]
name = "test"
domains = ["example.test"]
uplinks = ["isp3"]
`, netlab.ResolverAddr4(3)))
	r.sh("systemctl reload wanpin")
	r.waitJournal(`msg="domain policies: learning from DNS answers"`, 1, 10*time.Second)
	out, err := r.l.Dig(r.l.LAN, netlab.ResolverAddr4(3), netlab.NameWWW, "+time=3")
	if err != nil || !strings.Contains(out, netlab.ServerAddr4) {
		r.t.Fatalf("the LAN host asking ISP 3's resolver: %v: %s\n%s", err, out, r.journal())
	}
	if set := r.sh("nft list set inet wanpin p_test_dom4"); !strings.Contains(set, netlab.ServerAddr4) || !strings.Contains(set, `comment "`+netlab.NameWWW+`"`) {
		r.t.Errorf("the answer taught nothing:\n%s\n%s", set, r.journal())
	}
	out = r.sh("wanpin explain --src " + netlab.LANHost4 + " --dst " + netlab.ServerAddr4 + " --proto tcp --dport 443")
	if !strings.Contains(out, "learned from the DNS answer for "+netlab.NameWWW) {
		r.t.Errorf("explain of the learned address:\n%s", out)
	}
	if st := r.sh("wanpin status"); !strings.Contains(st, "domain policies: learning") {
		r.t.Errorf("status:\n%s", st)
	}
	if strings.Contains(r.journal(), `uplink down" uplink=isp3`) {
		r.t.Errorf("isp3's DNS probes failed with domains on:\n%s", r.journal())
	}
	// A restart removes the table (SIGTERM) and builds it again: the
	// learned address comes back with it, written down in /run/wanpin
	// under the unit's sandbox (RuntimeDirectory, preserved over stops).
	r.sh("systemctl restart wanpin")
	r.waitJournal(`msg="sticky sources and learned addresses of the last run"`, 1, 10*time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		set, _ := r.b.Exec("nft", "list", "set", "inet", "wanpin", "p_test_dom4")
		if strings.Contains(set, netlab.ServerAddr4) && strings.Contains(set, `comment "`+netlab.NameWWW+`"`) {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the learned address did not come back with a restart:\n%s\n%s", set, r.journal())
		}
	}
}

// stop removes every wanpin object from the kernel.
// A data quota's counts are written under the unit's sandbox
// (ProtectSystem=strict, StateDirectory=wanpin) to
// /var/lib/wanpin/quota.json and read back by the next start; only root
// may reset them.
func stepQuota(r *router) {
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami)+"quota = \"1TB\"\n")
	r.sh("systemctl reload wanpin")
	if out, err := r.b.ExecAs("wptest", "wanpin", "quota", "reset", "isp3"); err == nil || !strings.Contains(out, "permission denied") {
		r.t.Errorf("wanpin quota reset as an unprivileged user: %v\n%s", err, out)
	}
	r.sh("wanpin quota reset isp3") // written at once
	var kept struct {
		Format  string                     `json:"format"`
		Uplinks map[string]json.RawMessage `json:"uplinks"`
	}
	b, err := os.ReadFile(filepath.Join(r.b.Root(), "var/lib/wanpin/quota.json"))
	if err != nil || json.Unmarshal(b, &kept) != nil || kept.Uplinks["isp3"] == nil {
		r.t.Errorf("/var/lib/wanpin/quota.json after the reset: %v\n%s\n%s", err, b, r.journal())
	}
	r.sh("systemctl restart wanpin")
	j := r.waitJournal(`msg=quota uplink=isp3 used=\d+ quota=1000000000000`, 1, 10*time.Second)
	for _, bad := range []string{"saving the quota counts", "ignoring the quota state file"} {
		if strings.Contains(j, bad) {
			r.t.Errorf("the journal says %q:\n%s", bad, j)
		}
	}
}

func stepStop(r *router) {
	r.sh("systemctl stop wanpin")
	if objs := strings.TrimSpace(r.wanpinObjects()); objs != "" {
		r.t.Errorf("after systemctl stop:\n%s", objs)
	}
}

// purge leaves no file of the package and no kernel object.
func stepPurge(r *router) {
	files := r.sh("dpkg -L wanpin | while read f; do [ -f \"$f\" ] && echo \"$f\"; done")
	r.sh("systemctl start wanpin")
	// What the admin added (the hook, the metrics drop-in) is the
	// admin's to remove: dpkg leaves files it did not install.
	r.sh("rm -r /etc/wanpin/hooks.d/50-record /etc/systemd/system/wanpin.service.d")
	r.sh("dpkg --purge wanpin")
	for _, f := range strings.Fields(files) {
		if _, err := os.Lstat(filepath.Join(r.b.Root(), f)); err == nil {
			r.t.Errorf("%s is still there after the purge", f)
		}
	}
	for _, f := range []string{"etc/wanpin", "etc/systemd/system/multi-user.target.wants/wanpin.service", "var/lib/wanpin"} {
		if _, err := os.Lstat(filepath.Join(r.b.Root(), f)); err == nil {
			r.t.Errorf("/%s is still there after the purge", f)
		}
	}
	if objs := strings.TrimSpace(r.wanpinObjects()); objs != "" {
		r.t.Errorf("after the purge:\n%s", objs)
	}
}

// systemd-networkd is uplink 2's DHCP client: the lease's address and
// default route (main table, metric 1024) are what wanpin follows.
func stepNetworkdLease(r *router) {
	r.write("etc/systemd/network/50-wan2.network", `[Match]
Name=wan2

[Network]
DHCP=ipv4
# IPv6 stays as the lab set it.
IPv6AcceptRA=no
LinkLocalAddressing=no
KeepConfiguration=static
`)
	// The lab's root masks networkd (it would configure nothing, but
	// costs its start); this boot unmasks it.
	r.sh("rm -f /etc/systemd/system/systemd-networkd.service && systemctl daemon-reload && systemctl start systemd-networkd")
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := r.sh("ip -4 -o addr show dev wan2; ip -4 route show default dev wan2")
		if strings.Contains(out, "inet 198.51.100.") && strings.Contains(out, "default via") {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no DHCP lease on wan2 from networkd within 20 s:\n%s\n%s", out, r.sh("networkctl status wan2 --no-pager || true; journalctl -u systemd-networkd --no-pager -n 30"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type status struct {
	Uplinks []struct {
		Name    string
		State   string
		RTTms   float64 `json:"rtt_ms"`
		Traffic struct {
			InBytes  uint64 `json:"in_bytes"`
			OutBytes uint64 `json:"out_bytes"`
		}
	}
}

func (r *router) status() status {
	r.t.Helper()
	var s status
	out := r.sh("wanpin status --json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		r.t.Fatalf("wanpin status --json: %v\n%s", err, out)
	}
	return s
}

// Under the unit's sandbox the ICMP and TCP probes get answers, and the
// interface counters count the LAN's traffic.
func stepStatus(r *router) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.status()
		ok := len(s.Uplinks) == 3
		for _, u := range s.Uplinks {
			if u.Name == "isp3" {
				ok = ok && u.State == "up" // not probed
				continue
			}
			ok = ok && u.State == "up" && u.RTTms > 0 && u.Traffic.InBytes > 0 && u.Traffic.OutBytes > 0
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("want isp1 and isp2 up with probe RTTs and traffic, isp3 up:\n%s", r.sh("wanpin status --json"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wanpin exec's cgroup is made under the unit's ReadWritePaths and
// removed once the program has exited.
func stepExec(r *router) {
	out := r.sh("wanpin exec --uplink isp2 -- cat /proc/self/cgroup")
	if !strings.Contains(out, "wanpin-exec") {
		r.t.Fatalf("the program did not run in a wanpin-exec cgroup:\n%s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := r.sh("find /sys/fs/cgroup/wanpin-exec /sys/fs/cgroup/unified/wanpin-exec -mindepth 1 -type d 2>/dev/null || true")
		if strings.TrimSpace(left) == "" {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("exec cgroups left 10 s after the program exited:\n%s", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A transition hook, root's and 0755 as the hardening requires, runs
// under the sandbox with the transition in its environment.
func stepHooks(r *router) {
	r.write("etc/wanpin/hooks.d/50-record", "#!/bin/sh\necho \"hook saw $WANPIN_UPLINK $WANPIN_STATE\"\n")
	r.sh("chmod 0755 /etc/wanpin/hooks.d/50-record && wanpin down isp2")
	r.waitJournal(`transition hook ran.*hook saw isp2 down`, 1, 10*time.Second)
	// The conntrack flush works under the sandbox too.
	r.waitJournal(`conntrack flushed.*uplink=isp2 family=IPv4.*reason="uplink down"`, 1, 5*time.Second)
	r.sh("wanpin up isp2")
	r.waitJournal(`transition hook ran.*hook saw isp2 up`, 1, 10*time.Second)
}

// The PPP hook, run as Debian's /etc/ppp/ip-up runs it for pppd: a
// cleared environment, the PPP_ variables, run-parts.
func stepPPP(r *router) {
	addr := strings.Fields(r.sh("ip -4 -o addr show dev wan2 | awk '{print $4}'"))
	if len(addr) == 0 {
		r.t.Fatal("wan2 has no IPv4 address")
	}
	local := strings.Split(addr[0], "/")[0]
	r.sh(fmt.Sprintf("env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PPP_IFACE=wan2 PPP_TTY=/dev/ttyS0 PPP_SPEED=0 PPP_LOCAL=%s PPP_REMOTE=%s PPP_IPPARAM= run-parts /etc/ppp/ip-up.d",
		local, netlab.UplinkGateway4(2)))
	r.waitJournal(`ppp event.*interface=wan2.*local=`+regexp.QuoteMeta(local), 1, 10*time.Second)
}

// Metrics on localhost, with --metrics-listen given in a drop-in, as a
// Debian admin would.
func stepMetrics(r *router) {
	r.write("etc/systemd/system/wanpin.service.d/metrics.conf", `[Service]
ExecStart=
ExecStart=/usr/sbin/wanpin run --config /etc/wanpin/wanpin.toml --metrics-listen 127.0.0.1:9469
`)
	r.sh("systemctl daemon-reload && systemctl restart wanpin")
	// bash's /dev/tcp: a minimal Debian has no curl.
	out, err := r.b.Exec("bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/9469; printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3; cat <&3`)
	if err != nil {
		r.t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(out, `wanpin_uplink_up{interface="wan1",uplink="isp1"} 1`) {
		r.t.Errorf("/metrics from the booted router:\n%s", out)
	}
}

// networkd restarted: with the shipped drop-in it leaves wanpin's rules
// and routes alone; deleted by another program, wanpin's drift repair
// puts them back and says what was missing.
func stepNetworkdRestart(r *router) {
	objs := r.wanpinObjects()
	restart := func() {
		r.sh("systemctl restart systemd-networkd")
		deadline := time.Now().Add(20 * time.Second)
		for {
			if out, _ := r.try("networkctl status wan2 --no-pager"); strings.Contains(out, "State: routable (configured)") {
				return
			}
			if time.Now().After(deadline) {
				r.t.Fatalf("networkd did not configure wan2 again within 20 s:\n%s", r.sh("networkctl status wan2 --no-pager || true"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	restart()
	if got := r.wanpinObjects(); got != objs {
		r.t.Errorf("with the drop-in, networkd's restart changed wanpin's objects:\n%s\nwant\n%s", got, objs)
	}
	if strings.Contains(r.journal(), "repairing state") {
		r.t.Errorf("with the drop-in, wanpin had to repair something:\n%s", r.journal())
	}
	// Without the drop-in, networkd 252 (Debian 12's) deleted nothing
	// either here: its attempt to drop a foreign rule failed with ENOENT
	// ("Could not drop routing policy rule"); the drop-in stays for the
	// versions whose attempt works. What they would delete, deleted by
	// hand: wanpin's repair puts it back and says what was missing.
	r.sh("ip rule del priority 10102; ip route flush table 201 proto 119")
	j := r.waitJournal(`repairing state another program changed.*missing=`, 1, 10*time.Second)
	if !regexp.MustCompile(`repairing state another program changed.*missing=.*(rule|route)`).MatchString(j) {
		r.t.Errorf("the repair does not say which rules or routes were missing:\n%s", j)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.wanpinObjects() != objs {
		if time.Now().After(deadline) {
			r.t.Fatalf("after the repair, wanpin's objects\n%s\nwant\n%s", r.wanpinObjects(), objs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The HTTP and DNS probes under the sandbox: isp1 probes the server's
// web port, isp2 a resolver. Pointed where nothing answers (a closed
// port; ISP 1's resolver, which answers only ISP 1's customers) both go
// down with the probes' reason; pointed right, both come back.
func stepProbes(r *router) {
	probes := func(port int, resolver string) string {
		return fmt.Sprintf(`[[uplink]]
name = "isp1"
interface = "wan1"
weight = 3
[uplink.health]
method = "http"
targets = ["http://%s:%d/"]

[[uplink]]
name = "isp2"
interface = "wan2"
weight = 1
[uplink.health]
method = "dns"
targets = ["%s"]

[[uplink]]
name = "isp3"
interface = "wan3"
weight = 1
`, netlab.ServerAddr4, port, resolver)
	}
	r.write("etc/wanpin/wanpin.toml", probes(1, netlab.ResolverAddr4(1)))
	r.sh("systemctl reload wanpin")
	r.waitJournal(`uplink down.*uplink=isp1.*reason="health probes: .*http://`, 1, 10*time.Second)
	r.waitJournal(`uplink down.*uplink=isp2.*reason="health probes: .*`+regexp.QuoteMeta(netlab.ResolverAddr4(1)), 1, 10*time.Second)
	// Changed probes start afresh (the verdicts of the old ones are
	// about other targets): the uplinks are back at the reload, and the
	// new probes' answers give them an RTT again (the failed ones had
	// none).
	r.write("etc/wanpin/wanpin.toml", probes(netlab.PortWhoami, netlab.ResolverAddr4(2)))
	r.sh("systemctl reload wanpin")
	stepStatus(r)
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami))
	r.sh("systemctl reload wanpin")
	stepStatus(r)
}

// dhclient with Debian's dhclient-script and the package's exit hook:
// the lease, with its router and DNS server, reaches the running daemon
// over the system bus, and the uplink's IPv4 comes up.
func stepDhclient(r *router) {
	r.sh("dhclient -4 -pf /run/dhclient.wan3.pid -lf /var/lib/dhcp/dhclient.wan3.leases wan3 >/dev/null 2>&1")
	r.waitJournal(`msg=lease interface=wan3 family=IPv4 .*gateways=\[`+regexp.QuoteMeta(netlab.UplinkGateway4(3))+`\] dns=\[`+
		regexp.QuoteMeta(netlab.ResolverAddr4(3))+`\] client=dhclient`, 1, 20*time.Second)
	r.waitJournal(`uplink IPv4 up.*uplink=isp3`, 1, 10*time.Second)
}

// With the system bus gone (dbus stopped), the daemon keeps routing and
// systemctl reload still works: wanpin reload --pid falls back to SIGHUP.
// Once the bus is back, the daemon takes its name again by itself.
func stepReloadNoBus(r *router) {
	exported := len(regexp.MustCompile(`control interface on the system bus`).FindAllString(r.journal(), -1))
	r.sh("systemctl stop dbus.socket dbus.service")
	r.waitJournal(`lost the system bus, reconnecting`, 1, 10*time.Second)
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 2, netlab.PortWhoami))
	reloads := len(regexp.MustCompile(`configuration reloaded`).FindAllString(r.journal(), -1))
	r.sh("systemctl reload wanpin")
	// The unit is "reloading" until the daemon's READY=1, which may come
	// a moment after ExecReload's SIGHUP: wait for "active", never
	// "failed".
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := r.try("systemctl is-active wanpin")
		out = strings.TrimSpace(out)
		if out == "active" {
			break
		}
		if out != "reloading" || time.Now().After(deadline) {
			r.t.Errorf("after a reload without the bus: %s", out)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.waitJournal(`no bus .*sent SIGHUP`, 1, 5*time.Second)
	r.waitJournal(`configuration reloaded`, reloads+1, 5*time.Second)
	r.sh("systemctl start dbus.socket dbus.service")
	r.waitJournal(`control interface on the system bus`, exported+1, 20*time.Second)
	if out, err := r.b.ExecAs("wptest", "wanpin", "status"); err != nil {
		r.t.Errorf("wanpin status once the bus is back: %v\n%s", err, out)
	}
	r.write("etc/wanpin/wanpin.toml", fmt.Sprintf(config, 1, netlab.PortWhoami))
	if out := r.sh("wanpin reload"); !strings.Contains(out, "reloaded") {
		r.t.Errorf("wanpin reload over the bus again: %s", out)
	}
}
