package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/user"
	"strconv"
	"strings"

	"github.com/wanpin/wanpin/internal/rtnl"
	"github.com/wanpin/wanpin/pkg/cgroups"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/inet"
	"github.com/wanpin/wanpin/pkg/policy"
)

// explainResult is what `wanpin explain --json` prints: the explanation,
// and for each uplink it may take, the route the kernel picks for its
// mark; for a connection left to the main table, the route the main table
// picks and the uplink that is.
type explainResult struct {
	Flow        policy.Flow      `json:"flow"`
	FromDaemon  bool             `json:"from_daemon"`
	Explanation core.Explanation `json:"explanation"`
	Uplinks     []uplinkChance   `json:"uplinks"`
}

type uplinkChance struct {
	Uplink string  `json:"uplink"`
	Share  float64 `json:"share"`
	Kernel string  `json:"kernel"` // the route the kernel picks
}

// cmdExplain answers "where would this connection go, and why": the
// running daemon evaluates its own table (configuration, uplinks' states,
// services, execs) with the same compiled policy its nftables rules come
// from; without a daemon, the file is evaluated with every uplink assumed
// up. The kernel is then asked which route each candidate's mark gets.
func cmdExplain(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("explain", stderr)
	src := fs.String("src", "", "source address (a LAN host)")
	dst := fs.String("dst", "", "destination address (required)")
	proto := fs.String("proto", "tcp", "tcp or udp")
	sport := fs.Uint("sport", 0, "source port")
	dport := fs.Uint("dport", 0, "destination port")
	uid := fs.String("uid", "", "the router's own traffic, from this user (name or uid)")
	gid := fs.String("gid", "", "... and this group (name or gid; default: the user's primary group)")
	service := fs.String("service", "", "the router's own traffic, from this systemd unit or cgroup path")
	iif := fs.String("iif", "", "interface the forwarded traffic comes in on")
	mark := fs.String("mark", "", "the socket's own fwmark (SO_MARK), the router's own traffic")
	asJSON := fs.Bool("json", false, "print JSON")
	if fs.Parse(args) != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "wanpin explain: "+format+"\n", a...)
		return 2
	}
	f := policy.Flow{SPort: uint16(*sport), DPort: uint16(*dport), InIface: *iif}
	var err error
	if f.Dst, err = netip.ParseAddr(*dst); err != nil {
		return fail("--dst: %v", err)
	}
	if *src != "" {
		if f.Src, err = netip.ParseAddr(*src); err != nil {
			return fail("--src: %v", err)
		}
	}
	switch *proto {
	case "tcp":
		f.Proto = policy.ProtoTCP
	case "udp":
		f.Proto = policy.ProtoUDP
	default:
		return fail("--proto: want tcp or udp")
	}
	if *uid != "" || *gid != "" || *service != "" || *mark != "" {
		if *iif != "" || *src != "" {
			return fail("--iif and --src describe forwarded traffic; --uid, --gid, --service and --mark the router's own")
		}
		f.Local = true
		if f.UID, f.GID, err = identity(*uid, *gid); err != nil {
			return fail("%v", err)
		}
		if *mark != "" {
			m, err := strconv.ParseUint(*mark, 0, 32)
			if err != nil {
				return fail("--mark: %v", err)
			}
			f.Mark = uint32(m)
		}
		if *service != "" {
			r, err := cgroups.NewResolver()
			if err == nil {
				f.Cgroups, err = r.Lineage(*service)
			}
			if err != nil || len(f.Cgroups) == 0 {
				return fail("--service %s: no cgroup found (is it running?) %v", *service, err)
			}
		}
	}

	res := explainResult{Flow: f}
	ifaces := map[string]string{} // interface -> uplink
	if c, err := dialQuiet(); err == nil {
		res.Explanation, err = c.Explain(context.Background(), f)
		res.FromDaemon = err == nil
		if st, err := c.Status(context.Background()); err == nil {
			for _, u := range st.Uplinks {
				ifaces[u.Interface] = u.Name
			}
		}
		c.Close()
	}
	if !res.FromDaemon {
		cfg, ok := loadConfig(*cfgPath, stderr)
		if !ok {
			return 1
		}
		in := core.Facts{Config: cfg, Uplinks: map[string]core.UplinkState{}}
		for _, u := range cfg.Uplinks {
			ifaces[u.Interface] = u.Name
			// Without the daemon nothing is known of the interfaces:
			// both families are assumed up.
			st := core.AssumeUp(u)
			for _, fam := range inet.Families {
				st.Of(fam).Up = true
			}
			in.Uplinks[u.Name] = st
		}
		res.Explanation = core.Explain(core.Build(in), f, addrTypes(stderr))
	}
	switch res.Explanation.Outcome {
	case core.MainTable, core.NotRouted, core.RouterBalanced, core.Resolver, core.Rejected:
		// Unmarked: the kernel's routing decides (for the router's own
		// multipath route, per destination: its answer is this flow's).
		// A rejected connection's mark matches no ip rule either, and
		// it is refused only where that route leaves by an uplink.
		route, iface := kernelRouteDev(f, 0)
		if res.Explanation.Outcome == core.Rejected {
			route += notByUplink(ifaces, iface, "")
		}
		res.Uplinks = append(res.Uplinks, uplinkChance{Uplink: ifaces[iface], Share: 1, Kernel: route})
	default:
		for _, ch := range res.Explanation.Choices {
			route, iface := kernelRouteDev(f, ch.Mark)
			res.Uplinks = append(res.Uplinks, uplinkChance{Uplink: ch.Uplink, Share: ch.Share, Kernel: route + notByUplink(ifaces, iface, ch.Uplink)})
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
		return 0
	}
	printExplanation(stdout, res)
	return 0
}

// addrTypes asks the kernel of the namespace the CLI runs in the type of
// an address, as the daemon does: the router's own addresses are what
// they are with or without a daemon. A failed lookup is said on stderr
// and the address's own type stands.
func addrTypes(stderr io.Writer) core.AddrTypes {
	return func(a netip.Addr) core.AddrType {
		t, err := rtnl.AddrType(a)
		if err != nil {
			fmt.Fprintf(stderr, "wanpin explain: %v\n", err)
			return core.AddrTypeOf(a)
		}
		return t
	}
}

// identity resolves --uid and --gid; a user's primary group is the
// socket's gid unless --gid says otherwise (skgid is the process's
// effective gid, not its supplementary groups).
func identity(uidArg, gidArg string) (uint32, uint32, error) {
	var uid, gid uint64
	var err error
	primary := ""
	if uidArg != "" {
		if uid, err = strconv.ParseUint(uidArg, 10, 32); err != nil {
			u, lerr := user.Lookup(uidArg)
			if lerr != nil {
				return 0, 0, fmt.Errorf("--uid %s: %v", uidArg, lerr)
			}
			uid, _ = strconv.ParseUint(u.Uid, 10, 32)
			primary = u.Gid
		} else if u, lerr := user.LookupId(uidArg); lerr == nil {
			primary = u.Gid
		}
	}
	switch {
	case gidArg != "":
		if gid, err = strconv.ParseUint(gidArg, 10, 32); err != nil {
			g, lerr := user.LookupGroup(gidArg)
			if lerr != nil {
				return 0, 0, fmt.Errorf("--gid %s: %v", gidArg, lerr)
			}
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		}
	case primary != "":
		gid, _ = strconv.ParseUint(primary, 10, 32)
	default:
		// A uid without a passwd entry: its gid is unknown; the same
		// number is the usual convention (user private groups).
		gid = uid
	}
	return uint32(uid), uint32(gid), nil
}

func printExplanation(w io.Writer, r explainResult) {
	f, e := r.Flow, r.Explanation
	kind := "forwarded"
	if f.InIface != "" {
		kind += " from " + f.InIface
	}
	if f.Local {
		kind = fmt.Sprintf("the router's own, uid %d gid %d", f.UID, f.GID)
		if len(f.Cgroups) > 0 {
			kind += fmt.Sprintf(", cgroup %d", f.Cgroups[len(f.Cgroups)-1])
		}
	}
	if !r.FromDaemon {
		fmt.Fprintln(w, "wanpin is not running: evaluating the file with every uplink assumed up")
	}
	fmt.Fprintf(w, "flow: %s %s -> %s port %d (%s)\n", policy.ProtoName(f.Proto), orAny(f.Src), f.Dst, f.DPort, kind)
	if e.Policy == "" {
		fmt.Fprintln(w, "policy: none matches")
	} else {
		fmt.Fprintf(w, "policy: %q\n", e.Policy)
	}
	switch e.Outcome {
	case core.NotRouted:
		fmt.Fprintf(w, "verdict: %s: never policy-routed, the main table and the interface decide\n", e.Why)
	case core.Rejected:
		fmt.Fprintf(w, "verdict: rejected (%s)\n", e.Why)
	case core.MainTable:
		fmt.Fprintf(w, "verdict: left to the main routing table (%s), then pinned to the uplink it leaves by\n", e.Why)
	case core.RouterBalanced:
		var shares []string
		for _, c := range e.Choices {
			shares = append(shares, fmt.Sprintf("%s %.0f%%", c.Uplink, c.Share*100))
		}
		fmt.Fprintf(w, "verdict: %s (%s); the kernel picks per destination, this one:\n", e.Why, strings.Join(shares, ", "))
	case core.Resolver:
		fmt.Fprintf(w, "verdict: %s\n", e.Why)
	default:
		fmt.Fprintf(w, "verdict: %s (%s)\n", e.Outcome, e.Why)
	}
	for _, u := range r.Uplinks {
		name := u.Uplink
		if name == "" {
			name = "(no uplink)"
		}
		fmt.Fprintf(w, "  %3.0f%%  %-10s kernel: %s\n", u.Share*100, name, u.Kernel)
	}
}

func orAny(a netip.Addr) string {
	if !a.IsValid() {
		return "any"
	}
	return a.String()
}

// notByUplink notes a route that does not leave by the uplink chosen
// (want; "" for a flow no uplink was chosen for): the main table's
// specific and connected routes (a second LAN, a VPN, an uplink's own
// link) come before wanpin's marks (the suppress rule), so a balanced
// connection leaves by that route's interface, pinned to the uplink
// there if any, and a rejected one is not refused.
func notByUplink(ifaces map[string]string, iface, want string) string {
	if iface == "" {
		return ""
	}
	switch got := ifaces[iface]; {
	case got == "":
		return " (by no uplink: the main table's route to it comes first)"
	case want != "" && got != want:
		return " (by " + got + ": the main table's route to it comes first)"
	}
	return ""
}
