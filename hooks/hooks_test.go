// Package hooks holds the scripts that DHCP clients and pppd run to tell
// wanpin about leases and links; its tests run them the way each client
// does, against a fake wanpin that records its arguments.
package hooks

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const (
	dhclientHook = "dhcp/dhclient-exit-hook"
	dhcpcdHook   = "dhcp/dhcpcd-hook"
	nmHook       = "dhcp/nm-dispatcher"
	pppUp        = "ppp/ip-up"
)

// fake is a stand-in wanpin (and logger) in a directory of its own: each
// call appends one line to rec, its arguments separated by \x1f, and one
// to env with the variables the CLI honours.
type fake struct {
	dir, bin, rec, env, logs, reasons string
}

// newFake writes a fake wanpin that records its call and then runs body.
func newFake(t *testing.T, body string) *fake {
	t.Helper()
	dir := t.TempDir()
	f := &fake{dir: dir, bin: filepath.Join(dir, "wanpin"), rec: filepath.Join(dir, "rec"),
		env: filepath.Join(dir, "env"), logs: filepath.Join(dir, "logs"), reasons: filepath.Join(dir, "reasons")}
	// $reason: the DHCP clients export it to their scripts, so wanpin
	// inherits it; the real-client tests check which reason led to which
	// call.
	script := fmt.Sprintf(`#!/bin/sh
line=$(printf '%%s\037' "$@")
printf '%%s\n' "$line" >> '%s'
printf '%%s\n' "WANPIN_RUNTIME_DIR=${WANPIN_RUNTIME_DIR-unset} DBUS_SYSTEM_BUS_ADDRESS=${DBUS_SYSTEM_BUS_ADDRESS-unset}" >> '%s'
printf '%%s\n' "${reason-}" >> '%s'
%s
`, f.rec, f.env, f.reasons, body)
	writeExec(t, f.bin, script)
	// logger, which the hooks use for wanpin's failures: recorded, so
	// that the tests do not write to the machine's journal.
	writeExec(t, filepath.Join(dir, "logger"), fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> '%s'\n", f.logs))
	return f
}

func writeExec(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// calls are the recorded calls, each split into its arguments, sorted
// (the NetworkManager script runs both families at once).
func (f *fake) calls(t *testing.T) [][]string {
	t.Helper()
	return readCalls(t, f.rec)
}

func readCalls(t *testing.T, rec string) [][]string {
	t.Helper()
	b, err := os.ReadFile(rec)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		out = append(out, strings.Split(strings.TrimSuffix(line, "\x1f"), "\x1f"))
	}
	sort.Slice(out, func(i, j int) bool { return strings.Join(out[i], " ") < strings.Join(out[j], " ") })
	return out
}

// calls turns "a b c", "d e" into the expected, sorted calls. None of the
// values the hooks pass contains a space, so a recorded argument with a
// space in it (a list not split) fails the comparison.
func calls(lines ...string) [][]string {
	var out [][]string
	for _, l := range lines {
		out = append(out, strings.Fields(l))
	}
	sort.Slice(out, func(i, j int) bool { return strings.Join(out[i], " ") < strings.Join(out[j], " ") })
	return out
}

// baseEnv is a cleaned environment like the clients': a PATH with the fake
// first, no /etc/default/wanpin (the test machine's must not count), and a
// runtime directory and bus that lead nowhere, in case a real wanpin
// (say, one the packaging test installs meanwhile) were found.
func baseEnv(t *testing.T, pathDir string) []string {
	t.Helper()
	tmp := t.TempDir()
	return []string{
		"PATH=" + pathDir + ":/usr/bin:/bin",
		"WANPIN_DEFAULTS=" + filepath.Join(tmp, "no-defaults"),
		"WANPIN_RUNTIME_DIR=" + filepath.Join(tmp, "run"),
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(tmp, "no-bus"),
	}
}

// result is one run of a hook.
type result struct {
	stdout, stderr string
	status         int
	took           time.Duration
	// For sourced hooks: the caller's state (variables, options,
	// positional parameters, traps) before and after the dot command.
	before, after string
}

// quiet fails unless the hook printed nothing and returned 0.
func (r result) quiet(t *testing.T) {
	t.Helper()
	if r.status != 0 || r.stdout != "" || r.stderr != "" {
		t.Errorf("status %d, stdout %q, stderr %q; want 0 and nothing", r.status, r.stdout, r.stderr)
	}
}

// volatile lines of `set` that change by themselves in bash.
var volatile = regexp.MustCompile(`(?m)^(_|LINENO|BASH_COMMAND|BASH_LINENO|BASH_SOURCE|BASH_ARGC|BASH_ARGV|BASHPID|RANDOM|SRANDOM|SECONDS|EPOCHREALTIME|EPOCHSECONDS|PIPESTATUS|COLUMNS|LINES|HISTCMD)=.*\n`)

// source runs hook the way dhclient-script and dhcpcd-run-hooks do: the
// client's variables exported, the file sourced by `.` in the client's
// shell. The caller's shell sets opts first (e.g. "-eu") and has variables
// and positional parameters of its own, as those scripts do.
func source(t *testing.T, shell, hook, opts string, env []string) result {
	t.Helper()
	abs, err := filepath.Abs(hook)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	script := `
` + func() string {
		if opts != "" {
			return "set " + opts
		}
		return ""
	}() + `
script=/etc/dhcp/dhclient-exit-hooks.d/other exit_status=0 hook=other i=1 line=kept
trap ':' USR1
set -- one 'two words'
{ set; echo "opts=$-"; echo "args=$#:$*"; trap; } > "$WPT_STATE/before"
. "$WPT_HOOK"
echo "$?" > "$WPT_STATE/status"
{ set; echo "opts=$-"; echo "args=$#:$*"; trap; } > "$WPT_STATE/after"
`
	cmd := exec.Command(shell, "-c", script)
	cmd.Env = append(append([]string{}, env...), "WPT_STATE="+state, "WPT_HOOK="+abs)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if err != nil {
		t.Errorf("%s -c '. %s' failed: %v (stderr %q)", shell, hook, err, r.stderr)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(state, name))
		if err != nil {
			t.Errorf("the caller did not get past the hook: %v", err)
		}
		return volatile.ReplaceAllString(string(b), "")
	}
	r.before, r.after = read("before"), read("after")
	fmt.Sscan(read("status"), &r.status)
	return r
}

// execute runs an executed hook (NetworkManager's dispatcher, pppd's
// run-parts) with args and exactly env.
func execute(t *testing.T, hook string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(hook, args...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", hook, err)
	}
	return r
}

type hookCase struct {
	name string
	env  []string // the client's variables
	want [][]string
}

// runSourcedCases runs each case through dash (Debian's /bin/sh, which
// both clients use) with a strict caller (set -eu) and checks the exact
// wanpin calls, the status, the silence and the caller's state.
func runSourcedCases(t *testing.T, hook string, cases []hookCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, "")
			r := source(t, "sh", hook, "-eu", append(baseEnv(t, f.dir), c.env...))
			r.quiet(t)
			if d := cmp.Diff(r.before, r.after); d != "" {
				t.Errorf("the caller's state changed (-before +after):\n%s", d)
			}
			if d := cmp.Diff(c.want, f.calls(t)); d != "" {
				t.Errorf("wanpin calls (-want +got):\n%s", d)
			}
		})
	}
}

func vars(s ...string) []string { return s }

func TestDhclientReasons(t *testing.T) {
	const lease4 = "event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.1,198.51.100.2 --dns 198.51.100.53,198.51.100.54 --client dhclient"
	full4 := vars("interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0",
		"new_routers=198.51.100.1 198.51.100.2", "new_domain_name_servers=198.51.100.53 198.51.100.54",
		"new_broadcast_address=198.51.100.255", "new_dhcp_lease_time=600")
	old4 := vars("interface=wan0", "old_ip_address=198.51.100.10", "old_subnet_mask=255.255.255.0",
		"old_routers=198.51.100.1")
	lost4 := "event lease-lost wan0 --family 4 --client dhclient"
	full6 := vars("interface=wan0", "new_ip6_address=2001:db8:5::10", "new_ip6_prefixlen=128",
		"new_dhcp6_name_servers=2001:db8:5::53 2001:db8:5::54", "new_max_life=600", "new_preferred_life=300")
	lease6 := "event lease wan0 --family 6 --address 2001:db8:5::10/128 --dns 2001:db8:5::53,2001:db8:5::54 --client dhclient"
	old6 := vars("interface=wan0", "old_ip6_address=2001:db8:5::10", "old_ip6_prefixlen=128")
	lost6 := "event lease-lost wan0 --family 6 --client dhclient"
	var cases []hookCase
	for _, r := range []string{"BOUND", "RENEW", "REBIND", "REBOOT"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), full4...), calls(lease4)})
	}
	for _, r := range []string{"EXPIRE", "FAIL", "RELEASE", "STOP", "V6ONLY"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), old4...), calls(lost4)})
	}
	for _, r := range []string{"BOUND6", "RENEW6", "REBIND6", "REBOOT6"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), full6...), calls(lease6)})
	}
	for _, r := range []string{"EXPIRE6", "RELEASE6", "STOP6"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), old6...), calls(lost6)})
	}
	for _, r := range []string{"PREINIT", "PREINIT6", "MEDIUM", "ARPCHECK", "ARPSEND", "DEPREF6", "NBI", "SOMETHING-NEW", ""} {
		cases = append(cases, hookCase{"ignored " + r, append(vars("reason="+r, "cur_ip6_address=2001:db8:5::10"), full4...), nil})
	}
	cases = append(cases,
		hookCase{"no interface", vars("reason=BOUND", "new_ip_address=198.51.100.10"), nil},
		hookCase{"minimal lease", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.255"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/32 --client dhclient")},
		hookCase{"masks", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.240.0", "new_routers=198.51.100.1"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/20 --gateway 198.51.100.1 --client dhclient")},
		hookCase{"a mask that is no prefix goes as it is", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.0.255.0"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/255.0.255.0 --client dhclient")},
		// RFC 3442: with classless routes the router option is ignored;
		// the default routes' routers are the gateways.
		hookCase{"classless routes with defaults", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0",
			"new_routers=198.51.100.1",
			"new_rfc3442_classless_static_routes=24 192 0 2 198 51 100 9 0 198 51 100 7 32 203 0 113 5 198 51 100 3 0 198 51 100 8 8 10 198 51 100 4 0 0 0 0 0"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.7,198.51.100.8 --client dhclient")},
		hookCase{"classless routes without a default", vars("reason=RENEW", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0",
			"new_routers=198.51.100.1", "new_rfc3442_classless_static_routes=24 192 0 2 198 51 100 9"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/24 --client dhclient")},
		hookCase{"truncated classless routes", vars("reason=RENEW", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0",
			"new_rfc3442_classless_static_routes=0 198 51 100 7 32 203 0"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.7 --client dhclient")},
		hookCase{"stateless DHCPv6", vars("reason=RENEW6", "interface=wan0", "new_dhcp6_name_servers=2001:db8:5::53"),
			calls("event lease wan0 --family 6 --dns 2001:db8:5::53 --client dhclient")},
		hookCase{"delegated prefix bound", vars("reason=BOUND6", "interface=wan0", "new_ip6_prefix=2001:db8:77::/56", "new_dhcp6_name_servers=2001:db8:5::53"), nil},
		hookCase{"delegated prefix expired", vars("reason=EXPIRE6", "interface=wan0", "old_ip6_prefix=2001:db8:77::/56"), nil},
		hookCase{"temporary address", vars("reason=BOUND6", "interface=wan0", "new_ip6_address=2001:db8:5::99", "new_ip6_prefixlen=128", "new_ip6_type=temporary"), nil},
		hookCase{"stateless stop", vars("reason=STOP6", "interface=wan0", "old_dhcp6_name_servers=2001:db8:5::53"), calls(lost6)},
		hookCase{"timeout without a lease", vars("reason=TIMEOUT", "interface=wan0"), calls(lost4)},
	)
	runSourcedCases(t, dhclientHook, cases)
}

// TestDhclientTimeout: dhclient-script keeps a recorded lease on TIMEOUT
// if its router answers, else flushes the interface's addresses; the hook
// tells the two apart by the address (a fake ip shows the interface).
func TestDhclientTimeout(t *testing.T) {
	for _, c := range []struct {
		name, shown string
		want        [][]string
	}{
		{"kept", "inet 198.51.100.10/24 brd 198.51.100.255 scope global wan0", calls(
			"event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.1 --dns 198.51.100.53 --client dhclient")},
		{"flushed", "inet 198.51.100.100/24 brd 198.51.100.255 scope global wan0", calls("event lease-lost wan0 --family 4 --client dhclient")},
		{"none", "", calls("event lease-lost wan0 --family 4 --client dhclient")},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t, "")
			ipOut := ""
			if c.shown != "" {
				ipOut = fmt.Sprintf("printf '%%s\\n' '7: wan0    %s\\       valid_lft 500sec preferred_lft 500sec'\n", c.shown)
			}
			writeExec(t, filepath.Join(f.dir, "ip"), "#!/bin/sh\n[ \"$*\" = '-4 -o addr show dev wan0' ] || exit 1\n"+ipOut)
			r := source(t, "sh", dhclientHook, "", append(baseEnv(t, f.dir), "reason=TIMEOUT", "interface=wan0",
				"new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0", "new_routers=198.51.100.1",
				"new_domain_name_servers=198.51.100.53"))
			r.quiet(t)
			if d := cmp.Diff(c.want, f.calls(t)); d != "" {
				t.Errorf("wanpin calls (-want +got):\n%s", d)
			}
		})
	}
}

func TestDhcpcdReasons(t *testing.T) {
	full4 := vars("interface=wan0", "protocol=dhcp", "if_up=true", "new_ip_address=198.51.100.19", "new_subnet_cidr=24",
		"new_subnet_mask=255.255.255.0", "new_routers=198.51.100.1 198.51.100.2",
		"new_domain_name_servers=198.51.100.53 198.51.100.54", "new_broadcast_address=198.51.100.255")
	lease4 := "event lease wan0 --family 4 --address 198.51.100.19/24 --gateway 198.51.100.1,198.51.100.2 --dns 198.51.100.53,198.51.100.54 --client dhcpcd"
	old4 := vars("interface=wan0", "protocol=dhcp", "if_down=true", "old_ip_address=198.51.100.19", "old_subnet_cidr=24")
	lost4 := "event lease-lost wan0 --family 4 --client dhcpcd"
	full6 := vars("interface=wan0", "protocol=dhcp6", "new_dhcp6_ia_na1_ia_addr1=2001:db8:5::167",
		"new_dhcp6_ia_na1_ia_addr1_vltime=120", "new_dhcp6_ia_na1_ia_addr2=2001:db8:5::168",
		"new_dhcp6_name_servers=2001:db8:5::53 2001:db8:5::54")
	lease6 := "event lease wan0 --family 6 --address 2001:db8:5::167/128 --dns 2001:db8:5::53,2001:db8:5::54 --client dhcpcd"
	old6 := vars("interface=wan0", "protocol=dhcp6", "old_dhcp6_ia_na1_ia_addr1=2001:db8:5::167")
	lost6 := "event lease-lost wan0 --family 6 --client dhcpcd"
	var cases []hookCase
	for _, r := range []string{"BOUND", "RENEW", "REBIND", "REBOOT", "TIMEOUT", "INFORM", "STATIC"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), full4...), calls(lease4)})
	}
	for _, r := range []string{"EXPIRE", "EXPIRED", "NAK", "FAIL", "STOP", "RELEASE"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), old4...), calls(lost4)})
	}
	for _, r := range []string{"BOUND6", "RENEW6", "REBIND6", "REBOOT6", "TIMEOUT6"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), full6...), calls(lease6)})
	}
	for _, r := range []string{"EXPIRE6", "RELEASE6", "STOP6"} {
		cases = append(cases, hookCase{r, append(vars("reason="+r), old6...), calls(lost6)})
	}
	for _, r := range []string{"PREINIT", "CARRIER", "NOCARRIER", "NOCARRIER_ROAMING", "DEPARTED", "STOPPED",
		"IPV4LL", "3RDPARTY", "ROUTERADVERT", "DELEGATED6", "STATIC6", "RECONFIGURE", "TEST", "DUMP", "UNKNOWN", "SOMETHING-NEW", ""} {
		cases = append(cases, hookCase{"ignored " + r, append(append(vars("reason="+r), full4...), full6[2:]...), nil})
	}
	cases = append(cases,
		hookCase{"no interface", vars("reason=BOUND", "new_ip_address=198.51.100.10"), nil},
		hookCase{"stateless DHCPv6", vars("reason=INFORM6", "interface=wan0", "protocol=dhcp6", "new_dhcp6_name_servers=2001:db8:5::53"),
			calls("event lease wan0 --family 6 --dns 2001:db8:5::53 --client dhcpcd")},
		hookCase{"delegated prefix only", vars("reason=BOUND6", "interface=wan0", "protocol=dhcp6", "new_dhcp6_ia_pd1_prefix1=2001:db8:77::",
			"new_dhcp6_ia_pd1_prefix1_length=56", "new_delegated_dhcp6_prefix=2001:db8:77::/56"),
			calls("event lease wan0 --family 6 --client dhcpcd")},
		hookCase{"minimal lease", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.19", "new_subnet_cidr=32"),
			calls("event lease wan0 --family 4 --address 198.51.100.19/32 --client dhcpcd")},
		hookCase{"classless routes", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.19", "new_subnet_cidr=24",
			"new_routers=198.51.100.1", "new_classless_static_routes=192.0.2.0/24 198.51.100.9 0.0.0.0/0 198.51.100.7 0.0.0.0/0 0.0.0.0 0.0.0.0/0 198.51.100.8"),
			calls("event lease wan0 --family 4 --address 198.51.100.19/24 --gateway 198.51.100.7,198.51.100.8 --client dhcpcd")},
		hookCase{"classless routes without a default", vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.19", "new_subnet_cidr=24",
			"new_routers=198.51.100.1", "new_classless_static_routes=192.0.2.0/24 198.51.100.9"),
			calls("event lease wan0 --family 4 --address 198.51.100.19/24 --client dhcpcd")},
		hookCase{"timeout without a lease", vars("reason=TIMEOUT", "interface=wan0"), calls(lost4)},
	)
	runSourcedCases(t, dhcpcdHook, cases)
}

func TestNetworkManagerActions(t *testing.T) {
	dhcp4 := vars("DEVICE_IFACE=wan0", "DEVICE_IP_IFACE=wan0", "CONNECTION_ID=isp",
		"DHCP4_IP_ADDRESS=198.51.100.10", "DHCP4_SUBNET_MASK=255.255.255.0",
		"DHCP4_ROUTERS=198.51.100.1 198.51.100.2", "DHCP4_DOMAIN_NAME_SERVERS=198.51.100.53 198.51.100.54",
		"DHCP4_DHCP_LEASE_TIME=600", "IP4_NUM_ADDRESSES=1", "IP4_ADDRESS_0=198.51.100.10/24 198.51.100.1",
		"IP4_GATEWAY=198.51.100.1", "IP4_NAMESERVERS=198.51.100.53 198.51.100.54")
	lease4 := "event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.1,198.51.100.2 --dns 198.51.100.53,198.51.100.54 --client NetworkManager"
	dhcp6 := vars("DHCP6_IP6_ADDRESS=2001:db8:5::10", "DHCP6_DHCP6_NAME_SERVERS=2001:db8:5::53",
		"IP6_NUM_ADDRESSES=2", "IP6_ADDRESS_0=2001:db8:5:0:aa:bb:cc:dd/64 fe80::1", "IP6_ADDRESS_1=2001:db8:5::10/128 fe80::1",
		"IP6_GATEWAY=fe80::1", "IP6_NAMESERVERS=2001:db8:5::53 2001:db8:5::54")
	lease6 := "event lease wan0 --family 6 --address 2001:db8:5::10/128 --gateway fe80::1 --dns 2001:db8:5::53 --client NetworkManager"
	static4 := vars("DEVICE_IFACE=wan0", "DEVICE_IP_IFACE=wan0", "IP4_NUM_ADDRESSES=1",
		"IP4_ADDRESS_0=198.51.100.10/24 198.51.100.1", "IP4_GATEWAY=198.51.100.1", "IP4_NAMESERVERS=198.51.100.53")
	slaac6 := vars("IP6_NUM_ADDRESSES=1", "IP6_ADDRESS_0=2001:db8:5:0:aa:bb:cc:dd/64 fe80::1", "IP6_GATEWAY=fe80::1")
	lost := []string{"event lease-lost wan0 --family 4 --client NetworkManager", "event lease-lost wan0 --family 6 --client NetworkManager"}
	cases := []struct {
		name string
		args []string
		env  []string
		want [][]string
	}{
		{"up with DHCPv4", []string{"wan0", "up"}, append(append([]string{}, dhcp4...), slaac6...), calls(lease4)},
		{"up with both", []string{"wan0", "up"}, append(append([]string{}, dhcp4...), dhcp6...), calls(lease4, lease6)},
		{"up static", []string{"wan0", "up"}, append(append([]string{}, static4...), slaac6...), nil},
		{"dhcp4-change", []string{"wan0", "dhcp4-change"}, append(append([]string{}, dhcp4...), dhcp6...), calls(lease4)},
		{"dhcp6-change", []string{"wan0", "dhcp6-change"}, append(append([]string{}, dhcp4...), dhcp6...), calls(lease6)},
		{"dhcp4-change without a lease", []string{"wan0", "dhcp4-change"}, static4, calls(lost[0])},
		{"dhcp6-change without a lease", []string{"wan0", "dhcp6-change"}, static4, calls(lost[1])},
		{"down", []string{"wan0", "down"}, vars("DEVICE_IFACE=wan0", "DEVICE_IP_IFACE=wan0"), calls(lost...)},
		{"pre-down", []string{"wan0", "pre-down"}, append(append([]string{}, dhcp4...), dhcp6...), calls(lost...)},
		{"from IP4_*", []string{"wan0", "dhcp4-change"}, vars("DHCP4_IP_ADDRESS=198.51.100.10", "DHCP4_DHCP_LEASE_TIME=600",
			"IP4_ADDRESS_0=198.51.100.10/25 198.51.100.1", "IP4_GATEWAY=198.51.100.126", "IP4_NAMESERVERS=198.51.100.53 198.51.100.54"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/25 --gateway 198.51.100.126 --dns 198.51.100.53,198.51.100.54 --client NetworkManager")},
		{"gateway of IP4_ADDRESS_0", []string{"wan0", "dhcp4-change"}, vars("DHCP4_IP_ADDRESS=198.51.100.10", "DHCP4_SUBNET_MASK=255.255.255.0",
			"IP4_ADDRESS_0=198.51.100.10/24 198.51.100.1"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.1 --client NetworkManager")},
		{"classless routes", []string{"wan0", "dhcp4-change"}, append(append([]string{}, dhcp4...),
			"DHCP4_RFC3442_CLASSLESS_STATIC_ROUTES=192.0.2.0/24 198.51.100.9 0.0.0.0/0 198.51.100.7"),
			calls("event lease wan0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.7 --dns 198.51.100.53,198.51.100.54 --client NetworkManager")},
		{"DHCPv6 with a prefix length and no gateway", []string{"wan0", "dhcp6-change"}, vars("DHCP6_IP6_ADDRESS=2001:db8:5::10",
			"DHCP6_IP6_PREFIXLEN=64", "IP6_NAMESERVERS=2001:db8:5::54"),
			calls("event lease wan0 --family 6 --address 2001:db8:5::10/64 --dns 2001:db8:5::54 --client NetworkManager")},
		{"stateless DHCPv6", []string{"wan0", "dhcp6-change"}, append(append([]string{}, slaac6...), "DHCP6_DHCP6_NAME_SERVERS=2001:db8:5::53"),
			calls("event lease wan0 --family 6 --gateway fe80::1 --dns 2001:db8:5::53 --client NetworkManager")},
		{"interface from the environment", []string{"", "dhcp4-change"}, dhcp4, calls(lease4)},
	}
	for _, a := range []string{"pre-up", "vpn-up", "vpn-down", "vpn-pre-up", "vpn-pre-down", "hostname", "connectivity-change", "reapply", "", "something-new"} {
		cases = append(cases, struct {
			name string
			args []string
			env  []string
			want [][]string
		}{"ignored " + a, []string{"wan0", a}, append(append([]string{}, dhcp4...), dhcp6...), nil})
	}
	cases = append(cases, struct {
		name string
		args []string
		env  []string
		want [][]string
	}{"hostname has no device", []string{"none", "up"}, nil, nil})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, "")
			env := append(baseEnv(t, f.dir), c.env...)
			if len(c.args) > 1 && c.args[1] != "" {
				env = append(env, "NM_DISPATCHER_ACTION="+c.args[1])
			}
			r := execute(t, nmHook, env, c.args...)
			r.quiet(t)
			if d := cmp.Diff(c.want, f.calls(t)); d != "" {
				t.Errorf("wanpin calls (-want +got):\n%s", d)
			}
		})
	}
}

// TestNetworkManagerNoPath: the dispatcher passes no PATH at all.
func TestNetworkManagerNoPath(t *testing.T) {
	f := newFake(t, "")
	env := []string{"WANPIN_BIN=" + f.bin, "WANPIN_DEFAULTS=/nonexistent", "DEVICE_IP_IFACE=wan0"}
	r := execute(t, nmHook, env, "wan0", "down")
	r.quiet(t)
	if got := len(f.calls(t)); got != 2 {
		t.Errorf("%d calls, want 2", got)
	}
}

func TestPPPUp(t *testing.T) {
	for _, c := range []struct {
		name string
		env  []string
		want [][]string
	}{
		{"usepeerdns", vars("DNS1=198.51.100.53", "DNS2=198.51.100.54", "USEPEERDNS=1"),
			calls("event up ppp0 --local 198.51.100.18 --peer 198.51.100.17 --dns 198.51.100.53,198.51.100.54")},
		{"one server", vars("DNS1=198.51.100.53", "USEPEERDNS=1"),
			calls("event up ppp0 --local 198.51.100.18 --peer 198.51.100.17 --dns 198.51.100.53")},
		{"second only", vars("DNS2=198.51.100.54"),
			calls("event up ppp0 --local 198.51.100.18 --peer 198.51.100.17 --dns 198.51.100.54")},
		{"no peer DNS", nil, calls("event up ppp0 --local 198.51.100.18 --peer 198.51.100.17")},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t, "")
			r := execute(t, pppUp, append(append(baseEnv(t, f.dir), pppEnv...), c.env...), pppArgs...)
			r.quiet(t)
			if d := cmp.Diff(c.want, f.calls(t)); d != "" {
				t.Errorf("wanpin calls (-want +got):\n%s", d)
			}
		})
	}
}

// pppd's run-parts: positional arguments and PPP_* variables.
var (
	pppArgs = []string{"ppp0", "/dev/pts/3", "115200", "198.51.100.18", "198.51.100.17", "dsl"}
	pppEnv  = []string{"PPP_IFACE=ppp0", "PPP_TTY=/dev/pts/3", "PPP_SPEED=115200", "PPP_LOCAL=198.51.100.18",
		"PPP_REMOTE=198.51.100.17", "PPP_IPPARAM=dsl"}
)

// runner runs one hook once with env added to the base environment, the
// way its client does, with an event that makes it call wanpin.
type runner struct {
	name string
	run  func(t *testing.T, env []string) result
}

var runners = []runner{
	{"dhclient", func(t *testing.T, env []string) result {
		return source(t, "sh", dhclientHook, "", append(env, "reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0"))
	}},
	{"dhcpcd", func(t *testing.T, env []string) result {
		return source(t, "sh", dhcpcdHook, "", append(env, "reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_cidr=24"))
	}},
	{"NetworkManager", func(t *testing.T, env []string) result {
		return execute(t, nmHook, append(env, "DEVICE_IP_IFACE=wan0"), "wan0", "down")
	}},
	{"pppd", func(t *testing.T, env []string) result {
		return execute(t, pppUp, append(env, pppEnv...), pppArgs...)
	}},
}

// TestSlowWanpin: a wanpin that hangs, even one deaf to SIGTERM, costs
// the client about a second.
func TestSlowWanpin(t *testing.T) {
	for _, h := range runners {
		for name, body := range map[string]string{"hangs": "sleep 10", "ignores SIGTERM": "trap '' TERM; sleep 10"} {
			t.Run(h.name+"/"+name, func(t *testing.T) {
				t.Parallel()
				f := newFake(t, body)
				r := h.run(t, baseEnv(t, f.dir))
				r.quiet(t)
				if r.took > 3*time.Second {
					t.Errorf("the hook took %v with a wanpin that %s", r.took, name)
				}
				t.Logf("returned in %v", r.took.Round(time.Millisecond))
				if len(f.calls(t)) == 0 {
					t.Error("wanpin was not called")
				}
			})
		}
	}
}

// TestFailingWanpin: wanpin's complaints go to syslog, not to the client.
func TestFailingWanpin(t *testing.T) {
	for _, h := range runners {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, `echo "wanpin: bad lease" >&2; echo also stdout; exit 2`)
			r := h.run(t, baseEnv(t, f.dir))
			r.quiet(t)
			if h.name == "pppd" {
				return // ip-up predates the logger; it drops the output
			}
			logs, _ := os.ReadFile(f.logs)
			if !strings.Contains(string(logs), "wanpin: bad lease") {
				t.Errorf("logger got %q", logs)
			}
		})
	}
}

// TestNoWanpin: nothing installed, nothing done, nothing said.
func TestNoWanpin(t *testing.T) {
	for _, h := range runners {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			empty := t.TempDir()
			r := h.run(t, baseEnv(t, empty))
			r.quiet(t)
			if r.took > 3*time.Second {
				t.Errorf("took %v", r.took)
			}
			// WANPIN_BIN naming nothing is the same.
			r = h.run(t, append(baseEnv(t, empty), "WANPIN_BIN="+filepath.Join(empty, "wanpin")))
			r.quiet(t)
		})
	}
}

// TestDefaultsFile: /etc/default/wanpin (here WANPIN_DEFAULTS) chooses the
// binary, and its WANPIN_RUNTIME_DIR and DBUS_SYSTEM_BUS_ADDRESS reach the
// CLI exported; a broken file changes nothing for the client.
func TestDefaultsFile(t *testing.T) {
	for _, h := range runners {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			decoy := newFake(t, "")  // on PATH
			chosen := newFake(t, "") // only in the file
			tmp := t.TempDir()
			defaults := filepath.Join(tmp, "wanpin")
			os.WriteFile(defaults, []byte(fmt.Sprintf(
				"# wanpin's defaults\nWANPIN_BIN=%s\nWANPIN_RUNTIME_DIR=%s/run\nDBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/bus\n",
				chosen.bin, tmp, tmp)), 0o644)
			env := []string{"PATH=" + decoy.dir + ":/usr/bin:/bin", "WANPIN_DEFAULTS=" + defaults}
			r := h.run(t, env)
			r.quiet(t)
			if d := cmp.Diff(r.before, r.after); d != "" {
				t.Errorf("the caller's state changed (-before +after):\n%s", d)
			}
			if n := len(decoy.calls(t)); n != 0 {
				t.Errorf("wanpin on PATH called %d times, want the one of the file", n)
			}
			if len(chosen.calls(t)) == 0 {
				t.Fatal("the wanpin of the file was not called")
			}
			b, _ := os.ReadFile(chosen.env)
			want := fmt.Sprintf("WANPIN_RUNTIME_DIR=%s/run DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/bus", tmp, tmp)
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if l != want {
					t.Errorf("wanpin saw %q, want %q", l, want)
				}
			}

			for _, broken := range []string{"exit 1\n", "set -e; false\nWANPIN_BIN=x\n", "this is not shell (\n", "echo noise; echo noise >&2\n"} {
				os.WriteFile(defaults, []byte(broken), 0o644)
				r := h.run(t, env)
				r.quiet(t)
				if d := cmp.Diff(r.before, r.after); d != "" {
					t.Errorf("%q: the caller's state changed (-before +after):\n%s", broken, d)
				}
			}
		})
	}
}

// TestCallerSurvives: under dash and bash, with and without set -eu and
// noglob in the caller, with wanpin working or failing, the sourced hooks
// leave the client's shell exactly as it was and return 0.
func TestCallerSurvives(t *testing.T) {
	shells := []string{"sh"}
	if _, err := exec.LookPath("bash"); err == nil {
		shells = append(shells, "bash")
	}
	for _, hook := range []struct {
		path string
		env  []string
	}{
		{dhclientHook, vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_mask=255.255.255.0",
			"new_routers=198.51.100.1 198.51.100.2", "new_domain_name_servers=*", "new_rfc3442_classless_static_routes=0 198 51 100 7")},
		{dhclientHook, vars("reason=TIMEOUT", "interface=wan0", "new_ip_address=198.51.100.10")},
		{dhcpcdHook, vars("reason=BOUND", "interface=wan0", "new_ip_address=198.51.100.10", "new_subnet_cidr=24",
			"new_routers=198.51.100.1", "new_domain_name_servers=* ?", "new_classless_static_routes=0.0.0.0/0 198.51.100.7")},
		{dhcpcdHook, vars("reason=STOP6", "interface=wan0")},
	} {
		for _, sh := range shells {
			for _, opts := range []string{"", "-eu", "-euf", "-a"} {
				for _, body := range []string{"", "exit 1"} {
					name := fmt.Sprintf("%s/%s/%s/opts%s/%q", hook.path, hook.env[0], sh, opts, body)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						f := newFake(t, body)
						r := source(t, sh, hook.path, opts, append(baseEnv(t, f.dir), hook.env...))
						r.quiet(t)
						if d := cmp.Diff(r.before, r.after); d != "" {
							t.Errorf("the caller's state changed (-before +after):\n%s", d)
						}
						if len(f.calls(t)) != 1 {
							t.Errorf("calls: %q", f.calls(t))
						}
					})
				}
			}
		}
	}
}

// The tests below run the hooks under the real clients, in two network
// namespaces of their own joined by a veth pair: "srv" with dnsmasq
// serving DHCPv4 and DHCPv6 from 198.51.100.1/24 and 2001:db8:5::1/64,
// "cli" with the client on wpc0. The hooks find the fake wanpin through
// /etc/netns/<cli>/default/wanpin, which `ip netns exec` mounts over
// /etc/default; the machine's own network, /etc and /run are not touched,
// and everything is removed afterwards.

// netLab is one such pair of namespaces.
type netLab struct {
	t        *testing.T
	srv, cli string
	dir      string // scratch space
	etc      string // /etc/netns/<cli>
	log      *os.File
	dnsmasq  *exec.Cmd
}

// needClient skips unless root with ip, dnsmasq and the given programs.
func needClient(t *testing.T, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	for _, p := range append([]string{"ip", "dnsmasq"}, progs...) {
		if _, err := exec.LookPath(p); err != nil {
			if _, err := os.Stat(p); err != nil {
				t.Skipf("needs %s", p)
			}
		}
	}
}

// newNetLab makes the namespaces wphk<pid><tag>s and ...c.
func newNetLab(t *testing.T, f *fake, tag string) *netLab {
	t.Helper()
	id := fmt.Sprintf("wphk%d%s", os.Getpid()%100000, tag)
	l := &netLab{t: t, srv: id + "s", cli: id + "c", dir: t.TempDir()}
	l.etc = filepath.Join("/etc/netns", l.cli)
	var err error
	if l.log, err = os.Create(filepath.Join(l.dir, "commands.log")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.etc); err == nil {
		t.Fatalf("%s exists already", l.etc)
	}
	_, statErr := os.Stat("/etc/netns")
	t.Cleanup(func() {
		l.stopDnsmasq()
		// Whatever the test started in there (dhclient, dhcpcd and
		// their helpers), by pid, then the namespaces.
		for _, ns := range []string{l.cli, l.srv} {
			out, _ := exec.Command("ip", "netns", "pids", ns).Output()
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", pid).Run()
			}
			exec.Command("ip", "netns", "del", ns).Run()
		}
		os.RemoveAll(l.etc)
		if statErr != nil {
			os.Remove("/etc/netns") // only if this test made it and it is empty
		}
		if t.Failed() {
			b, _ := os.ReadFile(l.log.Name())
			t.Logf("commands and their output:\n%s", b)
		}
		l.log.Close()
	})
	for _, ns := range []string{l.srv, l.cli} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Skipf("cannot create a network namespace: %v %s", err, out)
		}
	}
	l.must(l.srv, "ip", "link", "set", "lo", "up")
	l.must(l.cli, "ip", "link", "set", "lo", "up")
	for _, ns := range []string{l.srv, l.cli} {
		l.must(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	l.must(l.srv, "ip", "link", "add", "wps0", "type", "veth", "peer", "name", "wpc0", "netns", l.cli)
	l.must(l.srv, "ip", "addr", "add", "198.51.100.1/24", "dev", "wps0")
	l.must(l.srv, "ip", "addr", "add", "2001:db8:5::1/64", "dev", "wps0", "nodad")
	l.must(l.srv, "ip", "link", "set", "wps0", "up")
	l.must(l.cli, "ip", "link", "set", "wpc0", "up")

	// The namespace's /etc/default holds only the test's wanpin file,
	// and it has a resolv.conf of its own, should a client write one.
	l.write("default/wanpin", fmt.Sprintf("WANPIN_BIN=%s\nWANPIN_RUNTIME_DIR=%s/run\n", f.bin, l.dir))
	l.write("resolv.conf", "# the test's\n")
	return l
}

// write puts a file into the namespace's /etc. Other labs may remove an
// empty /etc/netns meanwhile: the directories are made again then.
func (l *netLab) write(rel, content string) {
	l.t.Helper()
	p := filepath.Join(l.etc, rel)
	var err error
	for range 10 {
		if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			if err = os.WriteFile(p, []byte(content), 0o644); err == nil {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.t.Fatal(err)
}

// run runs argv in namespace ns, for 30 s at most; output goes to the
// log, not to a pipe a daemonising client could keep open.
func (l *netLab) run(ns string, argv ...string) error {
	fmt.Fprintf(l.log, "# [%s] %s\n", ns, strings.Join(argv, " "))
	cmd := exec.Command("timeout", append([]string{"-k", "5", "30", "ip", "netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = l.log, l.log
	err := cmd.Run()
	if err != nil {
		fmt.Fprintf(l.log, "# -> %v\n", err)
	}
	return err
}

func (l *netLab) must(ns string, argv ...string) {
	l.t.Helper()
	if err := l.run(ns, argv...); err != nil {
		l.t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
}

// startDnsmasq serves one address of each family, a router, option 121
// with a default route through another router (RFC 3442: that one is the
// gateway), and DNS servers.
func (l *netLab) startDnsmasq() {
	l.t.Helper()
	fmt.Fprintf(l.log, "# [%s] dnsmasq\n", l.srv)
	l.dnsmasq = exec.Command("ip", "netns", "exec", l.srv, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--interface=wps0", "--bind-interfaces", "--dhcp-authoritative", "--log-dhcp",
		"--dhcp-leasefile="+filepath.Join(l.dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"),
		"--dhcp-range=198.51.100.10,198.51.100.10,255.255.255.0,2m",
		"--dhcp-option=option:router,198.51.100.1",
		"--dhcp-option=option:classless-static-route,192.0.2.0/24,198.51.100.9,0.0.0.0/0,198.51.100.3",
		"--dhcp-option=option:dns-server,198.51.100.53,198.51.100.54",
		"--dhcp-range=2001:db8:5::10,2001:db8:5::10,64,2m", "--enable-ra",
		"--dhcp-option=option6:dns-server,[2001:db8:5::53]")
	l.dnsmasq.Stdout, l.dnsmasq.Stderr = l.log, l.log
	if err := l.dnsmasq.Start(); err != nil {
		l.t.Fatalf("dnsmasq: %v", err)
	}
	// Serving once its DHCP sockets (67, and 547 for DHCPv6) are bound.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command("ip", "netns", "exec", l.srv, "ss", "-Hlun").Output()
		if strings.Contains(string(out), ":67 ") && strings.Contains(string(out), ":547 ") {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("dnsmasq does not listen on 67 and 547:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *netLab) stopDnsmasq() {
	if l.dnsmasq != nil {
		l.dnsmasq.Process.Kill()
		l.dnsmasq.Wait()
		l.dnsmasq = nil
	}
}

// history is what the fake wanpin saw, in order: the client's reason,
// then the arguments.
func (f *fake) history(t *testing.T) []string {
	t.Helper()
	b, _ := os.ReadFile(f.rec)
	r, _ := os.ReadFile(f.reasons)
	calls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	reasons := strings.Split(strings.TrimSuffix(string(r), "\n"), "\n")
	var out []string
	for i, c := range calls {
		if c == "" {
			continue
		}
		reason := ""
		if i < len(reasons) {
			reason = reasons[i]
		}
		out = append(out, reason+": "+strings.Join(strings.Split(strings.TrimSuffix(c, "\x1f"), "\x1f"), " "))
	}
	return out
}

// expect waits (up to 15 s) for the history to become want, then checks
// that nothing else follows for a moment.
func expect(t *testing.T, f *fake, step string, want []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(f.history(t)) < len(want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// A check that nothing more comes needs a window to watch: a call
	// the client makes late (a second hook run) shows up within it.
	time.Sleep(300 * time.Millisecond)
	if d := cmp.Diff(want, f.history(t)); d != "" {
		t.Fatalf("after %s, wanpin calls (-want +got):\n%s", step, d)
	}
}

func TestUnderDhclient(t *testing.T) {
	t.Parallel()
	needClient(t, "/sbin/dhclient", "/sbin/dhclient-script")
	f := newFake(t, "")
	l := newNetLab(t, f, "dhcl")
	// The namespace's /etc/dhcp: a short timeout (for TIMEOUT; 3 s once
	// ran out before a loaded CI machine's first lease), option
	// 121 requested as Debian's dhclient.conf does, and only our exit
	// hook. The enter hook turns off make_resolv_conf, as Debian's
	// resolvconf does: dhclient-script would write its temporary file
	// next to /etc/resolv.conf, in the machine's /etc.
	hook, _ := os.ReadFile(dhclientHook)
	for rel, content := range map[string]string{
		"dhcp/dhclient.conf": `option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name-servers, rfc3442-classless-static-routes, dhcp6.name-servers;
timeout 6;
reboot 3;
initial-interval 1;
retry 60;
`,
		"dhcp/dhclient-exit-hooks.d/wanpin":    string(hook),
		"dhcp/dhclient-enter-hooks.d/noresolv": "make_resolv_conf() { :; }\n",
	} {
		l.write(rel, content)
	}
	l.startDnsmasq()
	d4 := []string{"dhclient", "-lf", filepath.Join(l.dir, "dhclient.leases"), "-pf", filepath.Join(l.dir, "dhclient.pid")}
	d6 := []string{"dhclient", "-6", "-lf", filepath.Join(l.dir, "dhclient6.leases"), "-pf", filepath.Join(l.dir, "dhclient6.pid")}
	dh := func(base []string, args ...string) []string {
		return append(append(append([]string{}, base...), args...), "wpc0")
	}

	const (
		lease4 = "event lease wpc0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.3 --dns 198.51.100.53,198.51.100.54 --client dhclient"
		lost4  = "event lease-lost wpc0 --family 4 --client dhclient"
		lease6 = "event lease wpc0 --family 6 --address 2001:db8:5::10/128 --dns 2001:db8:5::53 --client dhclient"
		lost6  = "event lease-lost wpc0 --family 6 --client dhclient"
	)
	var want []string
	step := func(name string, argv []string, calls ...string) {
		t.Helper()
		l.run(l.cli, argv...) // dhclient -1 exits 2 when it gets nothing: checked by the calls
		want = append(want, calls...)
		expect(t, f, name, want)
	}
	step("a first lease", dh(d4, "-1"), "BOUND: "+lease4)
	step("dhclient -x", dh(d4, "-x"), "STOP: "+lost4)
	step("a restart", dh(d4, "-1"), "REBOOT: "+lease4)
	step("dhclient -r", dh(d4, "-r"), "RELEASE: "+lost4)
	step("a DHCPv6 lease", dh(d6, "-1"), "BOUND6: "+lease6)
	step("dhclient -6 -r", dh(d6, "-r"), "RELEASE6: "+lost6)
	step("a DHCPv6 lease again", dh(d6, "-1"), "BOUND6: "+lease6)
	step("dhclient -6 -x", dh(d6, "-x"), "STOP6: "+lost6)
	step("a lease to fall back on", dh(d4, "-1"), "BOUND: "+lease4)
	step("dhclient -x", dh(d4, "-x"), "STOP: "+lost4)

	// No server: dhclient tries the recorded lease, its router answers.
	l.stopDnsmasq()
	step("no server, the router answers", dh(d4, "-1"), "TIMEOUT: "+lease4)
	out, _ := exec.Command("ip", "-n", l.cli, "-4", "-o", "addr", "show", "dev", "wpc0").Output()
	if !strings.Contains(string(out), "198.51.100.10/24") {
		t.Errorf("after TIMEOUT the recorded lease is not configured: %s", out)
	}
	step("dhclient -x", dh(d4, "-x"), "STOP: "+lost4)
	// Nor does the router: the script flushes the address, dhclient
	// gives up.
	l.must(l.srv, "ip", "addr", "del", "198.51.100.1/24", "dev", "wps0")
	step("no server, no router", dh(d4, "-1"), "TIMEOUT: "+lost4, "FAIL: "+lost4)

	if b, _ := os.ReadFile(filepath.Join(l.etc, "resolv.conf")); string(b) != "# the test's\n" {
		t.Errorf("dhclient-script wrote resolv.conf: %q", b)
	}
}

func TestUnderDhcpcd(t *testing.T) {
	t.Parallel()
	needClient(t, "dhcpcd", "mount")
	if _, err := os.Stat("/usr/lib/dhcpcd/dhcpcd-hooks"); err != nil {
		t.Skip("no /usr/lib/dhcpcd/dhcpcd-hooks")
	}
	f := newFake(t, "")
	l := newNetLab(t, f, "dhcp")
	// dhcpcd's hooks directory, /run and /var/lib/dhcpcd are replaced
	// by the test's own, in the namespace's mounts only.
	hooks, run, varlib := filepath.Join(l.dir, "hooks"), filepath.Join(l.dir, "run"), filepath.Join(l.dir, "varlib")
	for _, d := range []string{hooks, run, varlib} {
		os.MkdirAll(d, 0o755)
	}
	hook, _ := os.ReadFile(dhcpcdHook)
	os.WriteFile(filepath.Join(hooks, "90-wanpin"), hook, 0o644)
	conf := filepath.Join(l.dir, "dhcpcd.conf")
	// Not Debian's `persistent`, so that an exit removes the lease (see
	// the end for persistent), and ARP probes off to go fast.
	os.WriteFile(conf, []byte("option domain_name_servers, classless_static_routes\nrequire dhcp_server_identifier\nnoarp\nlastlease\n"), 0o644)
	persistent := filepath.Join(l.dir, "dhcpcd-persistent.conf")
	os.WriteFile(persistent, []byte("option domain_name_servers, classless_static_routes\nnoarp\npersistent\n"), 0o644)
	mounts := fmt.Sprintf("mount --bind %s /usr/lib/dhcpcd/dhcpcd-hooks && mount --bind %s /run && mount --bind %s /var/lib/dhcpcd && exec \"$@\"", hooks, run, varlib)
	dc := func(args ...string) []string {
		return append(append([]string{"sh", "-c", mounts, "sh", "dhcpcd"}, args...), "wpc0")
	}

	const (
		lease4 = "event lease wpc0 --family 4 --address 198.51.100.10/24 --gateway 198.51.100.3 --dns 198.51.100.53,198.51.100.54 --client dhcpcd"
		lost4  = "event lease-lost wpc0 --family 4 --client dhcpcd"
		lease6 = "event lease wpc0 --family 6 --address 2001:db8:5::10/128 --dns 2001:db8:5::53 --client dhcpcd"
		lost6  = "event lease-lost wpc0 --family 6 --client dhcpcd"
	)
	var want []string
	step := func(name string, argv []string, calls ...string) {
		t.Helper()
		l.run(l.cli, argv...)
		want = append(want, calls...)
		expect(t, f, name, want)
	}
	l.startDnsmasq()
	step("a first lease", dc("-f", conf, "-4", "-w", "-t", "20"), "BOUND: "+lease4)
	step("dhcpcd -N", dc("-4", "-N"), "RENEW: "+lease4)
	step("carrier lost", []string{"ip", "link", "set", "wpc0", "down"}, "EXPIRE: "+lost4)
	step("carrier back", []string{"ip", "link", "set", "wpc0", "up"}, "REBOOT: "+lease4)
	step("dhcpcd -k", dc("-4", "-k"), "STOP: "+lost4)
	step("a DHCPv6 lease", dc("-f", conf, "-6", "-w", "-t", "20"), "BOUND6: "+lease6)
	step("dhcpcd -6 -x", dc("-6", "-x"), "STOP6: "+lost6)
	step("a lease to fall back on", dc("-f", conf, "-4", "-w", "-t", "20"), "BOUND: "+lease4)
	step("dhcpcd -x", dc("-4", "-x"), "STOP: "+lost4)
	// A static configuration is configured and removed like a lease.
	// (INFORM, -s, is not tried: dhcpcd 9.4.1's launcher hangs in it.)
	step("static", dc("-f", conf, "-4", "-w", "-t", "20", "-S", "ip_address=198.51.100.11/24",
		"-S", "routers=198.51.100.1", "-S", "domain_name_servers=198.51.100.53"),
		"STATIC: event lease wpc0 --family 4 --address 198.51.100.11/24 --gateway 198.51.100.1 --dns 198.51.100.53 --client dhcpcd")
	step("dhcpcd -x", dc("-4", "-x"), "STOP: "+lost4)

	l.stopDnsmasq()
	step("no server, the last lease", dc("-f", conf, "-4", "-w", "-t", "20", "-y", "1"), "TIMEOUT: "+lease4)
	step("dhcpcd -x", dc("-4", "-x"), "STOP: "+lost4)

	// persistent: the exit leaves the lease on the interface and runs no
	// STOP, so wanpin hears of no loss.
	l.startDnsmasq()
	step("a lease, persistent", dc("-f", persistent, "-4", "-w", "-t", "20"), "REBOOT: "+lease4)
	step("dhcpcd -x, persistent", dc("-4", "-x"))
	out, _ := exec.Command("ip", "-n", l.cli, "-4", "-o", "addr", "show", "dev", "wpc0").Output()
	if !strings.Contains(string(out), "198.51.100.10/24") {
		t.Errorf("persistent dhcpcd removed the address on exit: %s", out)
	}
}
