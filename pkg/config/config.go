// Package config reads and validates wanpin's policy file,
// /etc/wanpin/wanpin.toml: the uplinks and the policies that steer
// traffic onto them.
//
// Every problem is reported with the file, the line and the key it concerns,
// so `wanpin check` can point the admin at it; see [Error].
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/wanpin/wanpin/pkg/policy"
	"github.com/wanpin/wanpin/pkg/quota"
)

// Defaults for the optional top-level keys.
const (
	// DefaultMarkMask is bits 24-30, which none of the software a router
	// is likely to run next to wanpin uses (docs/neighbours.md): Tailscale and OpenWrt's pbr use
	// 0x00ff0000 (Tailscale's bypass mark 0x80000 lost its bit to a
	// wanpin restore under that mask, and half its packets failed with
	// EPERM), kube-proxy 0x4000 and 0x8000, mwan3 0x3f00, wg-quick and
	// NetworkManager the exact value 51820, Istio 1337, Cilium 0x0f00
	// and up to bit 23. Only Calico (0xff000000, Kubernetes nodes) and
	// Mullvad's exact 0x6d6f6c65 meet it. 7 bits have room for 127
	// uplinks, more than MaxUplinks. Bit 31 stays free too.
	DefaultMarkMask uint32 = 0x7f000000
	// DefaultRulePriority sits well clear of the kernel's own rules (0,
	// 32766, 32767) and of the low priorities admins tend to pick by hand.
	DefaultRulePriority = 10000
)

// Limits of the values, shared by validation and its messages.
const (
	// RuleBlock is the number of `ip rule` priorities wanpin may use,
	// starting at rule_priority.
	RuleBlock = 1000
	// MaxRulePriority keeps the whole block below 32766, the priority of
	// the main table's rule, which wanpin's rules must come before.
	MaxRulePriority = 32766 - RuleBlock - 1
	MaxWeight       = 1000
	MaxTier         = 100
)

// Config is the validated content of the policy file.
type Config struct {
	Path         string
	MarkMask     uint32 // the fwmark / ct mark bits wanpin may use; default 0x7f000000
	RulePriority int    // first `ip rule` priority wanpin uses; default 10000
	// AllowConflicts names programs ("tailscale") or findings ("ip rule
	// 5210") whose clash with wanpin's marks or rules is accepted: they
	// are warnings instead of refusing a start or reload.
	AllowConflicts []string
	// RouterTraffic: how the router's own new connections that no policy
	// takes leave. Default balance.
	RouterTraffic RouterTraffic
	// LANPrefix6 is the LAN's own IPv6 prefix, which uplinks with
	// nat6 = "prefix" translate 1:1 into their Prefix6. Invalid: not set.
	LANPrefix6 netip.Prefix
	Uplinks    []Uplink
	Policies   []Policy
	// Sticky: the default balancing's memory of each source's uplink.
	Sticky Sticky
	// DomainTTLFloor: a learned address of a domain policy steers new
	// connections for its record's TTL, but at least this long (default
	// DefaultDomainTTLFloor) and at most MaxDomainTTL.
	DomainTTLFloor time.Duration
	// DomainNFLOGGroup is the NFLOG group the DNS answers of domain
	// policies are held in (default DefaultDomainNFLOGGroup).
	DomainNFLOGGroup uint16
	// MPTCP: wanpin manages the kernel's MPTCP endpoints (one per address
	// of every uplink that takes part) and limits (mptcp = true).
	MPTCP bool
}

// Domains tells whether some policy names domains (and so the daemon
// learns from DNS answers).
func (c *Config) Domains() bool {
	for _, p := range c.Policies {
		if len(p.Domains) > 0 {
			return true
		}
	}
	return false
}

// Limits and defaults of the domain policies' keys.
const (
	// DefaultDomainTTLFloor: resolvers and browsers keep answers longer
	// than short TTLs say (Chrome and Firefox cache for a minute), and a
	// connection they open to an address learned a minute ago must still
	// be steered.
	DefaultDomainTTLFloor = time.Minute
	MinDomainTTLFloor     = time.Second
	MaxDomainTTLFloor     = time.Hour
	// MaxDomainTTL caps a record's TTL (which may say a week): an
	// address that moved to another site stops being steered a day after
	// the answer at the latest.
	MaxDomainTTL = 24 * time.Hour
	// DefaultDomainNFLOGGroup: ulogd2's examples use groups 0 to 2 and
	// Suricata's nflog 2; 5353 is clear of them (and spells DNS twice).
	DefaultDomainNFLOGGroup = 5353
)

// Sticky is `sticky` and `sticky_by`, at the top level (the default
// balancing) or in a policy: a new connection from a source that had one
// within Timeout takes the uplink that one took, while that uplink is a
// candidate; every new connection starts the timeout again.
type Sticky struct {
	Timeout time.Duration // 0: not sticky
	// ByDestination (sticky_by = "source+destination"): remembered per
	// source and destination, so one client spreads over sites but keeps
	// its uplink per site.
	ByDestination bool
}

// Limits of sticky.
const (
	MinSticky = time.Second
	MaxSticky = 7 * 24 * time.Hour
)

// Uplink is one [[uplink]] element.
type Uplink struct {
	Name, Interface string
	Gateway4        netip.Addr // `gateway`: invalid when not configured (learned at run time)
	Gateway6        netip.Addr // `gateway6`: likewise; may be link-local (fe80::1 on the uplink's interface)
	Weight          int        // default 1, 1..1000: share of new connections within its tier; 0 with AutoWeight
	// AutoWeight (weight = "auto"): the weight follows what the uplink
	// delivers (pkg/adaptive); Bandwidth (bit/s, 0: not configured) is
	// where its estimate starts and its cap.
	AutoWeight bool
	Bandwidth  uint64
	Tier       int           // default 1, 1..100: lower tiers carry traffic while any of their uplinks is up
	DNS        []netip.Addr  // `dns`: the ISP's resolvers, besides those a DHCP or PPP hook reports
	Table      int           // routing table id as configured; 0: chosen at run time (core.AssignTables)
	Masquerade bool          // default true: IPv4 leaving here is masqueraded
	Nat6       Nat6Mode      // how LAN IPv6 traffic leaves here; default masquerade
	Prefix6    netip.Prefix  // the IPv6 prefix the ISP routes to this router; needed by nat6 none and prefix
	Health     *HealthConfig // nil: the link state alone says whether it is up
	// Failback: what happens to its connections when an uplink of a
	// better tier comes back: kept ("" or keep, the default) or moved.
	Failback Failback
	// Quota: a data quota (quota = "20GB"); nil: none.
	Quota *Quota
	// NoMPTCP: mptcp = false, with mptcp = true at the top level: the
	// uplink's addresses get no MPTCP endpoint.
	NoMPTCP bool
	Line    int // line of its [[uplink]] header
}

// Quota is an uplink's data quota: the bytes it may carry, both ways,
// per period.
type Quota struct {
	Limit    uint64       // bytes, at least 1
	Period   quota.Period // monthly (default) or daily
	ResetDay int          // monthly: the day of the month it starts again, 1..31 (default 1), clamped to the month's length
	Action   QuotaAction  // what an uplink whose quota is used up does
}

// QuotaAction says what becomes of an uplink whose quota is used up.
type QuotaAction string

const (
	// QuotaLastResort (default): it leaves the balancing and carries new
	// connections only while no other uplink can.
	QuotaLastResort QuotaAction = "last-resort"
	// QuotaOff: it carries none, as if it were down; its connections are
	// flushed.
	QuotaOff QuotaAction = "off"
)

// Failback says what becomes of a worse tier's connections when a better
// tier's uplink comes back.
type Failback string

const (
	// FailbackKeep: they stay where they are until they end (a second
	// DSL line: nothing to gain by breaking them).
	FailbackKeep Failback = "keep"
	// FailbackMove: they are moved (a metered LTE backup): UDP flows on
	// their next packet, TCP connections reset so that their
	// applications reconnect, over the better uplink.
	FailbackMove Failback = "move"
)

// Failback tells whether some uplink moves its connections on failback.
func (c *Config) Failback() bool {
	for _, u := range c.Uplinks {
		if u.Failback == FailbackMove {
			return true
		}
	}
	return false
}

// EvictMark is the ct mark (within MarkMask) of connections failback
// moves off an uplink: the mask's last value, which no uplink has while
// some uplink moves its connections (checkMarkRoom).
func (c *Config) EvictMark() uint32 { return c.MarkMask }

// RouterTraffic says how the router's own traffic that no policy takes
// leaves.
type RouterTraffic string

const (
	// RouterBalance: spread over the healthy uplinks of the best tier by
	// weight (per destination: the kernel's multipath route), failing over
	// as forwarded traffic does. What a router's DNS forwarder, NTP, apt and
	// VPN clients need to survive an ISP's death.
	RouterBalance RouterTraffic = "balance"
	// RouterMain: follow the main routing table, as without wanpin (the
	// main table's default route decides; it is not failed over).
	RouterMain RouterTraffic = "main"
)

// Nat6Mode says how LAN IPv6 traffic leaves an uplink.
type Nat6Mode string

const (
	// Nat6Masquerade: the source becomes the uplink's own address, as for
	// IPv4. Works with any LAN addressing; balancing and failover as IPv4.
	Nat6Masquerade Nat6Mode = "masquerade"
	// Nat6None: LAN hosts use addresses of the uplink's Prefix6 and keep
	// them; the source prefix chooses the uplink. Anything else leaving
	// here (another prefix's host failed over to this uplink, the router's
	// own traffic with another uplink's address) is masqueraded, or the ISP
	// would drop it.
	Nat6None Nat6Mode = "none"
	// Nat6Prefix: the LAN prefix is mapped 1:1 onto the uplink's Prefix6
	// (host bits kept), both ways.
	Nat6Prefix Nat6Mode = "prefix"
)

// Policy is one [[policy]] element. Policies are evaluated in file order and
// the first match wins. Matchers that are empty match anything.
//
// The match keys are a policy.Match, whose one semantics both the nftables
// rules and `wanpin explain` use: users and groups resolved to ids
// (numeric strings as is, names via the user database), services kept as
// written (resolved at run time).
type Policy struct {
	Name string
	policy.Match
	Uplinks      []string // names of the candidate uplinks; empty means all uplinks
	FallbackNone bool     // fallback = "none": reject rather than use another uplink
	Sticky       Sticky
	Line         int // line of its [[policy]] header
}

// MarkShift is the number of trailing zero bits of MarkMask: uplink marks are
// small integers shifted into the mask.
func (c *Config) MarkShift() int { return bits.TrailingZeros32(c.MarkMask) }

// UplinkMark is the fwmark of the i-th uplink (0-based, file order). Mark 0
// is left out so that "no mark" never means an uplink; validation made sure
// every uplink's mark fits inside MarkMask.
func (c *Config) UplinkMark(i int) uint32 { return uint32(i+1) << c.MarkShift() }

// Error is one problem in the policy file. It prints as
// "file:line: key: message". Key is the dotted path of the key concerned:
// uplinks are numbered from 1 in file order (uplink[2].weight), policies are
// named when they have a name (policy "p2p".ports, else policy[3].ports).
// Line is 0 only for problems that have no place in the file, such as a
// missing [[uplink]]; Key is empty for syntax errors.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, sorted by line. Parse returns
// it as its error when there is at least one.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads and parses the policy file at path. A file that cannot be read
// is reported with the os error as is (errors.Is(err, fs.ErrNotExist) works);
// one that is not a regular file with [ErrNotRegular], one larger than
// [MaxFileSize] with [ErrTooLarge], both in an *fs.PathError that names
// it; a file with problems with [Errors].
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

var (
	// ErrNotRegular: the policy file is a FIFO, a device, a directory or a
	// socket. Reading a FIFO waits for a writer, for ever if none comes
	// (the daemon's loop with it, on a reload); a device like /dev/zero
	// never ends.
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge: the policy file is larger than MaxFileSize.
	ErrTooLarge = fmt.Errorf("larger than %d MiB, the limit for a policy file", MaxFileSize>>20)
)

// readFile reads the policy file: a regular file of at most MaxFileSize
// bytes, or a symbolic link to one (configuration managers link files
// into /etc). Anything else is refused at once, without waiting on it.
func readFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := regular(path, st); err != nil {
		return nil, err
	}
	return readRegular(path)
}

// readRegular opens path, checks that what it opened is a regular file and
// reads it. Something else may have been put there since readFile looked.
func readRegular(path string) ([]byte, error) {
	// O_NONBLOCK: opening a
	// FIFO then returns at once instead of waiting for a writer (and a
	// serial line does not wait for its carrier), and fstat says what was
	// opened. It changes nothing for a regular file. O_NOCTTY: a terminal
	// does not become the daemon's.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := regular(path, st); err != nil {
		return nil, err
	}
	if st.Size() > MaxFileSize {
		return nil, &fs.PathError{Op: "read", Path: path, Err: ErrTooLarge}
	}
	// A regular file can still grow while it is read, or be a /proc file
	// whose size says nothing: read one byte past the limit to know. The
	// buffer starts at the size stat gave, not grown by doubling from
	// nothing.
	var b bytes.Buffer
	b.Grow(int(st.Size()) + bytes.MinRead)
	if _, err := b.ReadFrom(io.LimitReader(f, MaxFileSize+1)); err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	if b.Len() > MaxFileSize {
		return nil, &fs.PathError{Op: "read", Path: path, Err: ErrTooLarge}
	}
	return b.Bytes(), nil
}

// regular refuses what is not a regular file, saying what it is.
func regular(path string, st fs.FileInfo) error {
	m := st.Mode()
	if m.IsRegular() {
		return nil
	}
	what := fmt.Sprintf("of type %v", m.Type())
	switch {
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m&fs.ModeDevice != 0:
		what = "a block device"
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	}
	return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w: it is %s", ErrNotRegular, what)}
}
