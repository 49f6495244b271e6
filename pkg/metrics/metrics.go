// Package metrics serves wanpin's state in the Prometheus text format.
// Hand-written: a dozen gauges and counters do not need a client library.
package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Uplink is one uplink's figures.
type Uplink struct {
	Name, Interface string
	Up              bool
	Transitions     uint64
	Pinned          int
	Flushed         uint64
	InBytes         uint64
	InPackets       uint64
	OutBytes        uint64
	OutPackets      uint64
	V4, V6          Family
}

// Family is one address family of an uplink.
type Family struct {
	Up   bool          // carries new connections of this family
	RTT  time.Duration // latest health probe round trip; 0: unknown
	Loss float64       // 0..1; -1: not probed
}

// Snapshot is everything exported at one moment.
type Snapshot struct {
	Uplinks     []Uplink
	Applies     uint64
	ApplyErrors uint64
}

// Source produces a snapshot (from the daemon's loop).
type Source func(ctx context.Context) (Snapshot, error)

// Write renders a snapshot and the process's own figures.
func Write(w io.Writer, s Snapshot) {
	type series struct {
		name, help, typ string
		lines           []string
	}
	var all []series
	add := func(name, help, typ string, lines ...string) {
		all = append(all, series{name, help, typ, lines})
	}
	var up, famUp, trans, pinned, flushed, bytes, packets, rtt, loss []string
	for _, u := range s.Uplinks {
		l := fmt.Sprintf(`uplink=%q,interface=%q`, u.Name, u.Interface)
		up = append(up, fmt.Sprintf("wanpin_uplink_up{%s} %d", l, b2i(u.Up)))
		trans = append(trans, fmt.Sprintf("wanpin_uplink_transitions_total{%s} %d", l, u.Transitions))
		pinned = append(pinned, fmt.Sprintf("wanpin_uplink_pinned_connections{%s} %d", l, u.Pinned))
		flushed = append(flushed, fmt.Sprintf("wanpin_uplink_conntrack_flushed_total{%s} %d", l, u.Flushed))
		bytes = append(bytes,
			fmt.Sprintf(`wanpin_uplink_bytes_total{%s,direction="in"} %d`, l, u.InBytes),
			fmt.Sprintf(`wanpin_uplink_bytes_total{%s,direction="out"} %d`, l, u.OutBytes))
		packets = append(packets,
			fmt.Sprintf(`wanpin_uplink_packets_total{%s,direction="in"} %d`, l, u.InPackets),
			fmt.Sprintf(`wanpin_uplink_packets_total{%s,direction="out"} %d`, l, u.OutPackets))
		for _, f := range []struct {
			name string
			Family
		}{{"ipv4", u.V4}, {"ipv6", u.V6}} {
			lf := fmt.Sprintf("%s,family=%q", l, f.name)
			famUp = append(famUp, fmt.Sprintf("wanpin_uplink_family_up{%s} %d", lf, b2i(f.Up)))
			if f.RTT > 0 {
				rtt = append(rtt, fmt.Sprintf("wanpin_uplink_rtt_seconds{%s} %g", lf, f.RTT.Seconds()))
			}
			if f.Loss >= 0 {
				loss = append(loss, fmt.Sprintf("wanpin_uplink_loss_ratio{%s} %g", lf, f.Loss))
			}
		}
	}
	add("wanpin_uplink_up", "Whether the uplink takes new connections.", "gauge", up...)
	add("wanpin_uplink_family_up", "Whether the uplink takes new connections of the address family.", "gauge", famUp...)
	add("wanpin_uplink_transitions_total", "Up/down transitions of the uplink.", "counter", trans...)
	add("wanpin_uplink_pinned_connections", "Conntrack entries pinned to the uplink.", "gauge", pinned...)
	add("wanpin_uplink_conntrack_flushed_total", "Conntrack entries of the uplink flushed.", "counter", flushed...)
	add("wanpin_uplink_bytes_total", "Bytes through the uplink's interface.", "counter", bytes...)
	add("wanpin_uplink_packets_total", "Packets through the uplink's interface.", "counter", packets...)
	add("wanpin_uplink_rtt_seconds", "Latest health probe round trip.", "gauge", rtt...)
	add("wanpin_uplink_loss_ratio", "Health probe loss over the window.", "gauge", loss...)
	add("wanpin_applies_total", "Kernel state applies.", "counter", fmt.Sprintf("wanpin_applies_total %d", s.Applies))
	add("wanpin_apply_errors_total", "Kernel state applies that failed.", "counter", fmt.Sprintf("wanpin_apply_errors_total %d", s.ApplyErrors))
	add("go_goroutines", "Goroutines.", "gauge", fmt.Sprintf("go_goroutines %d", runtime.NumGoroutine()))
	if rss, ok := residentBytes(); ok {
		add("process_resident_memory_bytes", "Resident memory.", "gauge", fmt.Sprintf("process_resident_memory_bytes %d", rss))
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		add("process_cpu_seconds_total", "CPU time.", "counter", fmt.Sprintf("process_cpu_seconds_total %g", cpu.Seconds()))
	}
	for _, se := range all {
		if len(se.lines) == 0 {
			continue
		}
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", se.name, se.help, se.name, se.typ)
		for _, l := range se.lines {
			fmt.Fprintln(w, l)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func residentBytes() (uint64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * uint64(os.Getpagesize()), true
}

// Serve answers /metrics on addr until ctx ends.
func Serve(ctx context.Context, addr string, src Source, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listening on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		s, err := src(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		Write(w, s)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("metrics on", "address", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}
