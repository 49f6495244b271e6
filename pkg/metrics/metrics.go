// Package metrics serves wanpin's state in the Prometheus text exposition
// format through github.com/VictoriaMetrics/metrics. A scrape reads the
// status the daemon's loop last published (core.Status): it never waits
// for the loop and never touches the kernel.
//
// Why not prometheus/client_golang: side by side in one run (go run
// ./internal/bench -only resources, 4 dual-stack uplinks x 4 targets,
// the shipped build), it added 1.8-2.0 MB resident (17.3-17.5 MB without
// metrics, 19.4-19.7 MB with it: its protobuf descriptors are registered
// at start whether metrics are on or not), which crosses the daemon's
// 20 MB target; this library added 0.1-0.3 MB.
package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/wanpin/wanpin/pkg/core"
)

// Source returns the status to export.
type Source func() (core.Status, error)

func init() {
	// # TYPE lines, as Prometheus expects them.
	vm.ExposeMetadata(true)
}

// Write renders a status, then the Go runtime's and the process's own
// figures (go_goroutines, process_resident_memory_bytes,
// process_cpu_seconds_total, process_open_fds...).
func Write(w io.Writer, s core.Status) {
	set := vm.NewSet()
	gauge := func(name, labels string, v float64) { set.GetOrCreateGauge(name+"{"+labels+"}", nil).Set(v) }
	counter := func(name, labels string, v float64) { set.GetOrCreateFloatCounter(name + "{" + labels + "}").Set(v) }
	for _, u := range s.Uplinks {
		// Interface names are printable ASCII without '"' (ifname.Check):
		// %q escapes the backslash as the exposition format wants.
		l := fmt.Sprintf(`interface=%q,uplink=%q`, u.Interface, u.Name)
		gauge("wanpin_uplink_up", l, b2f(u.State == "up"))
		counter("wanpin_uplink_transitions_total", l, float64(u.Transitions))
		gauge("wanpin_uplink_pinned_connections", l, float64(u.Pinned))
		counter("wanpin_uplink_conntrack_flushed_total", l, float64(u.Flushed))
		counter("wanpin_uplink_bytes_total", `direction="in",`+l, float64(u.Traffic.InBytes))
		counter("wanpin_uplink_bytes_total", `direction="out",`+l, float64(u.Traffic.OutBytes))
		counter("wanpin_uplink_packets_total", `direction="in",`+l, float64(u.Traffic.InPackets))
		counter("wanpin_uplink_packets_total", `direction="out",`+l, float64(u.Traffic.OutPackets))
		for _, f := range []struct {
			name string
			r    core.FamilyReport
		}{{"ipv4", u.IPv4}, {"ipv6", u.IPv6}} {
			lf := fmt.Sprintf(`family=%q,%s`, f.name, l)
			gauge("wanpin_uplink_family_up", lf, b2f(f.r.State == "up"))
			if f.r.RTTms > 0 {
				gauge("wanpin_uplink_rtt_seconds", lf, f.r.RTTms/1000)
			}
			if f.r.Loss >= 0 {
				gauge("wanpin_uplink_loss_ratio", lf, f.r.Loss)
			}
		}
	}
	set.GetOrCreateFloatCounter("wanpin_applies_total").Set(float64(s.Applies))
	set.GetOrCreateFloatCounter("wanpin_apply_errors_total").Set(float64(s.ApplyErrors))
	set.WritePrometheus(w)
	vm.WriteProcessMetrics(w)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler is the /metrics handler.
func Handler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := src()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		Write(w, s)
	})
}

// Serve answers /metrics on addr until ctx ends.
func Serve(ctx context.Context, addr string, src Source, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listening on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(src))
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
