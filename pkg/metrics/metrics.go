// Package metrics serves wanpin's state in the Prometheus exposition
// format through prometheus/client_golang. A scrape reads the status the
// daemon's loop last published (core.Status): it never waits for the loop
// and never touches the kernel.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wanpin/wanpin/pkg/core"
)

// Source returns the status to export.
type Source func() (core.Status, error)

var (
	uplinkLabels = []string{"uplink", "interface"}
	familyLabels = []string{"uplink", "interface", "family"}
	dirLabels    = []string{"uplink", "interface", "direction"}

	descUp          = prometheus.NewDesc("wanpin_uplink_up", "Whether the uplink takes new connections.", uplinkLabels, nil)
	descFamilyUp    = prometheus.NewDesc("wanpin_uplink_family_up", "Whether the uplink takes new connections of the address family.", familyLabels, nil)
	descTransitions = prometheus.NewDesc("wanpin_uplink_transitions_total", "Up/down transitions of the uplink.", uplinkLabels, nil)
	descPinned      = prometheus.NewDesc("wanpin_uplink_pinned_connections", "Conntrack entries pinned to the uplink (counted at most every few seconds).", uplinkLabels, nil)
	descFlushed     = prometheus.NewDesc("wanpin_uplink_conntrack_flushed_total", "Conntrack entries of the uplink flushed.", uplinkLabels, nil)
	descBytes       = prometheus.NewDesc("wanpin_uplink_bytes_total", "Bytes through the uplink's interface.", dirLabels, nil)
	descPackets     = prometheus.NewDesc("wanpin_uplink_packets_total", "Packets through the uplink's interface.", dirLabels, nil)
	descRTT         = prometheus.NewDesc("wanpin_uplink_rtt_seconds", "Latest health probe round trip.", familyLabels, nil)
	descLoss        = prometheus.NewDesc("wanpin_uplink_loss_ratio", "Health probe loss over the window.", familyLabels, nil)
	descApplies     = prometheus.NewDesc("wanpin_applies_total", "Kernel state applies.", nil, nil)
	descApplyErrors = prometheus.NewDesc("wanpin_apply_errors_total", "Kernel state applies that failed.", nil, nil)
)

// collector turns one status into metrics at each scrape.
type collector struct{ src Source }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descFamilyUp, descTransitions, descPinned, descFlushed,
		descBytes, descPackets, descRTT, descLoss, descApplies, descApplyErrors} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.src()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descUp, err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	for _, u := range s.Uplinks {
		gauge(descUp, b2f(u.State == "up"), u.Name, u.Interface)
		counter(descTransitions, float64(u.Transitions), u.Name, u.Interface)
		gauge(descPinned, float64(u.Pinned), u.Name, u.Interface)
		counter(descFlushed, float64(u.Flushed), u.Name, u.Interface)
		counter(descBytes, float64(u.Traffic.InBytes), u.Name, u.Interface, "in")
		counter(descBytes, float64(u.Traffic.OutBytes), u.Name, u.Interface, "out")
		counter(descPackets, float64(u.Traffic.InPackets), u.Name, u.Interface, "in")
		counter(descPackets, float64(u.Traffic.OutPackets), u.Name, u.Interface, "out")
		for _, f := range []struct {
			name string
			r    core.FamilyReport
		}{{"ipv4", u.IPv4}, {"ipv6", u.IPv6}} {
			gauge(descFamilyUp, b2f(f.r.State == "up"), u.Name, u.Interface, f.name)
			if f.r.RTTms > 0 {
				gauge(descRTT, f.r.RTTms/1000, u.Name, u.Interface, f.name)
			}
			if f.r.Loss >= 0 {
				gauge(descLoss, f.r.Loss, u.Name, u.Interface, f.name)
			}
		}
	}
	counter(descApplies, float64(s.Applies))
	counter(descApplyErrors, float64(s.ApplyErrors))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler is the /metrics handler: wanpin's figures, the Go runtime's and
// the process's (resident memory, CPU, open files).
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
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
