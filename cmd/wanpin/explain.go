package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/wanpin/wanpin/pkg/config"
	"github.com/wanpin/wanpin/pkg/plan"
)

// cmdExplain answers "where would this connection go, and why": which
// policy takes it, which uplinks are candidates and up (from the running
// daemon), each one's chance, and the route the kernel itself picks for
// that uplink's mark.
func cmdExplain(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("explain", stderr)
	src := fs.String("src", "", "source address (a LAN host; for the router's own traffic, use --uid)")
	dst := fs.String("dst", "", "destination address (required)")
	proto := fs.String("proto", "tcp", "tcp or udp")
	dport := fs.Uint("dport", 0, "destination port")
	uid := fs.Int("uid", -1, "the router's own traffic, from this uid")
	iif := fs.String("iif", "", "interface the forwarded traffic comes in on")
	if fs.Parse(args) != nil {
		return 2
	}
	flow := plan.Flow{DPort: uint16(*dport), InIface: *iif}
	var err error
	if flow.Dst, err = netip.ParseAddr(*dst); err != nil {
		fmt.Fprintf(stderr, "wanpin explain: --dst: %v\n", err)
		return 2
	}
	if *src != "" {
		if flow.Src, err = netip.ParseAddr(*src); err != nil {
			fmt.Fprintf(stderr, "wanpin explain: --src: %v\n", err)
			return 2
		}
	}
	switch *proto {
	case "tcp":
		flow.Proto = 6
	case "udp":
		flow.Proto = 17
	default:
		fmt.Fprintln(stderr, "wanpin explain: --proto: want tcp or udp")
		return 2
	}
	if *uid >= 0 {
		flow.Local, flow.UID = true, uint32(*uid)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return 1
	}
	// The uplinks' states come from the daemon; without it, say so and
	// assume every uplink is up.
	// The flow's family decides which family of each uplink counts.
	v6 := flow.Dst.Is6() && !flow.Dst.Is4In6()
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	states := map[string]plan.UplinkState{}
	stateOf := map[string]string{}
	c, err := dialQuiet()
	if err == nil {
		defer c.Close()
		if s, err := c.Status(context.Background()); err == nil {
			for _, u := range s.Uplinks {
				f := u.IPv4
				if v6 {
					f = u.IPv6
				}
				stateOf[u.Name] = fam + " " + f.State
				fs := plan.FamilyState{Up: f.State == "up"}
				if v6 {
					states[u.Name] = plan.UplinkState{V6: fs}
				} else {
					states[u.Name] = plan.UplinkState{V4: fs}
				}
			}
		}
	}
	if len(stateOf) == 0 {
		fmt.Fprintln(stdout, "wanpin is not running: assuming every uplink is up")
		for _, u := range cfg.Uplinks {
			stateOf[u.Name] = "up?"
			states[u.Name] = plan.UplinkState{V4: plan.FamilyState{Up: true}, V6: plan.FamilyState{Up: true}}
		}
	}
	e := plan.Explain(cfg, states, flow)
	kind := "forwarded"
	if flow.Local {
		kind = fmt.Sprintf("the router's own, uid %d", flow.UID)
	}
	fmt.Fprintf(stdout, "flow: %s %s -> %s port %d (%s)\n", *proto, orAny(flow.Src), flow.Dst, flow.DPort, kind)
	if e.Policy == "" {
		fmt.Fprintln(stdout, "policy: none matches: balanced over all uplinks")
	} else {
		fmt.Fprintf(stdout, "policy: %q\n", e.Policy)
	}
	if e.NotRouted {
		fmt.Fprintln(stdout, "verdict: link-local or multicast: never policy-routed, the main table and the interface decide")
		return 0
	}
	var cands []string
	for _, n := range e.Candidates {
		cands = append(cands, n+" ("+stateOf[n]+")")
	}
	fmt.Fprintf(stdout, "candidates: %s\n", strings.Join(cands, ", "))
	switch {
	case e.Rejected:
		fmt.Fprintln(stdout, "verdict: rejected (fallback = \"none\" and no candidate is up)")
		return 0
	case len(e.Choices) == 0:
		fmt.Fprintln(stdout, "verdict: no uplink is up: left to the main routing table")
		return 0
	case e.Fallback:
		fmt.Fprintln(stdout, "no candidate is up: fallback \"any\" hands it to the default balancing")
	}
	if e.SourcePrefix.IsValid() {
		fmt.Fprintf(stdout, "source %s is in %s's prefix6 %s (nat6 none): it leaves there, untranslated\n",
			flow.Src, e.Choices[0].Uplink, e.SourcePrefix)
	}
	for _, ch := range e.Choices {
		fmt.Fprintf(stdout, "  %3.0f%%  %-10s mark %#x  kernel: %s\n", ch.Share*100, ch.Uplink, ch.Mark, kernelRoute(flow, ch.Mark))
	}
	return 0
}

func orAny(a netip.Addr) string {
	if !a.IsValid() {
		return "any"
	}
	return a.String()
}

// kernelRoute asks the kernel where a packet with this mark goes: the
// routing rules and tables wanpin installed, as the kernel applies them.
func kernelRoute(f plan.Flow, mark uint32) string {
	opts := &netlink.RouteGetOptions{Mark: mark}
	if f.Local {
		uid := f.UID
		opts.UID = &uid
	}
	routes, err := netlink.RouteGetWithOptions(net.IP(f.Dst.AsSlice()), opts)
	if err != nil {
		return "error: " + err.Error()
	}
	if len(routes) == 0 {
		return "no route"
	}
	r := routes[0]
	var parts []string
	if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		parts = append(parts, "dev "+link.Attrs().Name)
	}
	if r.Gw != nil {
		parts = append(parts, "via "+r.Gw.String())
	}
	if r.Src != nil {
		parts = append(parts, "src "+r.Src.String())
	}
	if r.Table != 0 {
		parts = append(parts, fmt.Sprintf("table %d", r.Table))
	}
	return strings.Join(parts, " ")
}
