// Package lease reads and writes the lease files DHCP client hooks leave
// for wanpin (through `wanpin event lease`), one per interface and family
// under the runtime directory (/run/wanpin/leases). The files let a lease
// reach the daemon when it starts after the client bound, and they are
// the one way a lease gets in: the D-Bus event only says which file to
// read again.
package lease

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wanpin/wanpin/internal/atomicfile"
	"github.com/wanpin/wanpin/pkg/core"
	"github.com/wanpin/wanpin/pkg/ifname"
	"github.com/wanpin/wanpin/pkg/inet"
)

// MaxSize bounds a lease file: a few addresses.
const MaxSize = 4096

// maxList bounds the routers and DNS servers kept.
const maxList = 8

// Dir is the lease directory under a runtime directory.
func Dir(runtime string) string { return filepath.Join(runtime, "leases") }

// Name is the file of one interface and family.
func Name(k core.LeaseKey) string {
	return fmt.Sprintf("%s.%d", k.Interface, k.Family)
}

// Format writes a lease as the file holds it.
func Format(l core.Lease) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "client=%s\n", l.Client)
	if l.Address.IsValid() {
		fmt.Fprintf(&b, "address=%s\n", l.Address)
	}
	fmt.Fprintf(&b, "gateways=%s\n", join(l.Gateways))
	fmt.Fprintf(&b, "dns=%s\n", join(l.DNS))
	return b.Bytes()
}

func join(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// Parse reads a lease of family f. Values come from a DHCP server through
// a hook: every one is checked, and a bad one refuses the whole file.
func Parse(data []byte, f inet.Family) (core.Lease, error) {
	var l core.Lease
	if len(data) > MaxSize {
		return l, fmt.Errorf("%d bytes, at most %d", len(data), MaxSize)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			return l, fmt.Errorf("line %q: want key=value", sc.Text())
		}
		var err error
		switch key {
		case "client":
			// Letters of either case: the NetworkManager dispatcher
			// hook names its client "NetworkManager", and a lowercase
			// cutset refused every lease it reported.
			if len(val) > 32 || strings.Trim(val, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
				return l, fmt.Errorf("client %q: want a short name", val)
			}
			l.Client = val
		case "address":
			if l.Address, err = netip.ParsePrefix(val); err != nil || inet.OfPrefix(l.Address) != f {
				return l, fmt.Errorf("address %q: want an %v address with its prefix length", val, f)
			}
		case "gateways":
			if l.Gateways, err = addrs(val, f, true); err != nil {
				return l, fmt.Errorf("gateways: %w", err)
			}
		case "dns":
			if l.DNS, err = addrs(val, f, false); err != nil {
				return l, fmt.Errorf("dns: %w", err)
			}
		default:
			return l, fmt.Errorf("unknown key %q", key)
		}
	}
	if !l.Address.IsValid() && f == inet.IPv4 {
		return l, errors.New("no address")
	}
	return l, sc.Err()
}

// addrs reads a comma-separated list of unicast addresses of family f
// (link-local allowed for gateways: an IPv6 router is one).
func addrs(s string, f inet.Family, linkLocalOK bool) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is not an address", p)
		}
		a = a.Unmap()
		if inet.Of(a) != f || !(a.IsGlobalUnicast() || (linkLocalOK && a.IsLinkLocalUnicast())) {
			return nil, fmt.Errorf("%q is not a unicast %v address", p, f)
		}
		if len(out) < maxList {
			out = append(out, a)
		}
	}
	return out, nil
}

// UsableDNS splits a hook's comma-separated DNS list into the servers a
// lease file may hold (unicast addresses of family f, as Parse wants
// them) and the rest. A DHCP server that lists 0.0.0.0, a loopback or a
// link-local resolver among good ones must not cost the lease its
// gateway: the CLI records the usable servers and drops the others.
func UsableDNS(s string, f inet.Family) (kept, dropped []string) {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if _, err := addrs(p, f, false); err != nil {
			dropped = append(dropped, p)
			continue
		}
		kept = append(kept, p)
	}
	return kept, dropped
}

// Write stores a lease (nil: removes it) atomically: a reader sees the
// old file or the new one.
func Write(runtime string, k core.LeaseKey, l *core.Lease) error {
	if err := ifname.Check(k.Interface); err != nil {
		return err
	}
	dir := Dir(runtime)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, Name(k))
	if l == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	// Written to a temporary file and renamed: a reader never sees half
	// a lease.
	return atomicfile.Write(path, Format(*l), 0o644)
}

// Read loads one lease file; a missing file is no lease (nil, nil).
// Only a regular file owned by root and writable by nobody else counts:
// whoever can write it can steer an uplink's gateway.
func Read(runtime string, k core.LeaseKey) (*core.Lease, error) {
	path := filepath.Join(Dir(runtime), Name(k))
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if !st.Mode().IsRegular() || sys == nil || sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("%s: not a regular file owned by root and writable by root alone", path)
	}
	data := make([]byte, MaxSize+1)
	n, _ := f.Read(data)
	l, err := Parse(data[:n], k.Family)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &l, nil
}

// ReadAll loads the leases of the given interfaces.
func ReadAll(runtime string, ifaces []string) (map[core.LeaseKey]core.Lease, []error) {
	out := map[core.LeaseKey]core.Lease{}
	var errs []error
	for _, i := range ifaces {
		for _, f := range inet.Families {
			k := core.LeaseKey{Interface: i, Family: f}
			l, err := Read(runtime, k)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if l != nil {
				out[k] = *l
			}
		}
	}
	return out, errs
}
