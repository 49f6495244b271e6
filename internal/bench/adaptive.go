package main

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/wanpin/wanpin/internal/netlab"
)

// The adaptive weights benchmark (issue 18): ISPs shaped with tbf to 80
// and 20 Mbit/s toward the router; a fixed batch of downloads started
// at a steady rate (open loop: a download starts on time whatever the
// others do), offered at half of the two links together; the mean time
// to complete them with weight = "auto" against equal fixed weights,
// interleaved cycle by cycle. With equal weights the 20 Mbit/s link is
// offered more than it carries and its downloads queue up; with learnt
// weights neither is.
const (
	adaptiveSize     = 512 << 10 // bytes per download
	adaptiveRate     = 12        // downloads started per second: 50 Mbit/s offered
	adaptiveBatch    = 200       // downloads measured per run
	adaptiveMetrics  = "127.0.0.1:9469"
	adaptiveDeadline = 60 * time.Second // one download at most
)

func adaptiveConfig(weight string) string {
	var b []byte
	for i := 1; i <= 2; i++ {
		b = fmt.Appendf(b, "[[uplink]]\nname = \"isp%d\"\ninterface = \"wan%d\"\nweight = %s\n", i, i, weight)
		if weight == `"auto"` {
			b = fmt.Appendf(b, "bandwidth = \"100Mbit\"\n")
		}
		b = fmt.Appendf(b, "\n[uplink.health]\ntargets = [\"%s\", \"%s\"]\n\n", netlab.ServerAddr4, netlab.ServerAlt4)
	}
	return string(b)
}

func runAdaptive(bin string, cycles int) error {
	dir, bin, l, done, err := benchLab(bin, 2)
	if err != nil {
		return err
	}
	defer done()
	fmt.Printf("%-44s %14s %10s %s\n", "figure", "value", "target", "")
	ratios, err := adaptiveRatios(l, bin, dir, cycles)
	if err != nil {
		return err
	}
	med, lo, hi := ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1]
	verdict := "ok"
	if med > 0.7 {
		verdict = "MISSED"
	}
	fmt.Printf("%-44s %14s %10s %s (median of %d per-cycle ratios, %.3f..%.3f)\n", "downloads: auto / equal weights, mean time",
		fmt.Sprintf("%.3f", med), "<= 0.7", verdict, len(ratios), lo, hi)
	return nil
}

// adaptiveRatios runs the cycles and returns the per-cycle ratios auto
// / equal of the batches' mean completion times, sorted.
func adaptiveRatios(l *netlab.Lab, bin, dir string, cycles int) ([]float64, error) {
	for i, rate := range []string{"80mbit", "20mbit"} {
		if err := l.Shape(i+1, rate); err != nil {
			return nil, err
		}
	}
	var ratios []float64
	for c := 1; c <= cycles; c++ {
		var means [2]time.Duration
		for k, weight := range []string{"1", `"auto"`} {
			stop, err := startWanpin(l, bin, dir, adaptiveConfig(weight), "--metrics-listen", adaptiveMetrics)
			if err != nil {
				return nil, err
			}
			// The same warm-up load for both: auto learns its weights
			// from it (until they are 3:1 or 45 s have passed); then
			// every warm-up download ends before the batch starts.
			warm := time.Now()
			w1, w2, err := warmUp(l, weight == `"auto"`)
			took := time.Since(warm)
			if err != nil {
				stop()
				return nil, err
			}
			mean, failed, err := batch(l)
			stop()
			if err != nil {
				return nil, err
			}
			means[k] = mean
			fmt.Printf("cycle %d, weight = %-6s warm-up %4.1fs to weights %d:%d, %d downloads of %d KiB at %d/s: mean %v (%d failed)\n",
				c, weight, took.Seconds(), w1, w2, adaptiveBatch, adaptiveSize>>10, adaptiveRate,
				mean.Round(time.Millisecond), failed)
		}
		r := float64(means[1]) / float64(means[0])
		ratios = append(ratios, r)
		fmt.Printf("cycle %d: auto / equal %.3f\n", c, r)
	}
	sort.Float64s(ratios)
	return ratios, nil
}

// warmUp offers the batch's load until the weights are 3:1 (auto) or
// for 10 s (equal), then waits for its downloads to end. It returns the
// weights in force.
func warmUp(l *netlab.Lab, auto bool) (int, int, error) {
	// First the probes' idle round trips, which the estimator's baseline
	// takes at its next sample (once a second).
	probed := time.Now().Add(10 * time.Second)
	for {
		out, _ := l.Exec(l.Router, "curl", "-sS", "-m", "5", "http://"+adaptiveMetrics+"/metrics")
		if len(rttSeries.FindAllString(out, -1)) == 2 {
			break
		}
		if time.Now().After(probed) {
			return 0, 0, fmt.Errorf("no round trips of both uplinks in the metrics:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	go steady(l, stop, &wg, nil)
	deadline := time.Now().Add(10 * time.Second)
	if auto {
		deadline = time.Now().Add(45 * time.Second)
	}
	var w1, w2 int
	var err error
	for time.Now().Before(deadline) {
		if w1, w2, err = weights(l); err != nil {
			break
		}
		if auto && w2 > 0 && w1 >= 3*w2 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	return w1, w2, err
}

// batch starts adaptiveBatch downloads at adaptiveRate a second and
// returns the mean completion time of those that completed, and how
// many failed: the stream service gives up on a client after 10 s
// without progress, which an overloaded link's retransmission backoff
// can reach. Leaving them out favours the worse configuration.
func batch(l *netlab.Lab) (mean time.Duration, failed int, err error) {
	var mu sync.Mutex
	var times []time.Duration
	var lastErr error
	var wg sync.WaitGroup
	stop := make(chan struct{})
	steadyN(l, stop, &wg, adaptiveBatch, func(d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed, lastErr = failed+1, err
			return
		}
		times = append(times, d)
	})
	wg.Wait()
	if failed > adaptiveBatch/10 {
		return 0, failed, fmt.Errorf("%d of %d downloads failed, the last: %w", failed, adaptiveBatch, lastErr)
	}
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	return sum / time.Duration(len(times)), failed, nil
}

// steady starts downloads at adaptiveRate a second until stop closes.
func steady(l *netlab.Lab, stop chan struct{}, wg *sync.WaitGroup, done func(time.Duration, error)) {
	steadyN(l, stop, wg, -1, done)
}

// steadyN starts n downloads (n < 0: until stop closes) at adaptiveRate
// a second, each in its own goroutine, on a fixed schedule.
func steadyN(l *netlab.Lab, stop chan struct{}, wg *sync.WaitGroup, n int, done func(time.Duration, error)) {
	start := time.Now()
	for i := 0; n < 0 || i < n; i++ {
		at := start.Add(time.Duration(i) * time.Second / adaptiveRate)
		select {
		case <-stop:
			return
		case <-time.After(time.Until(at)):
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := l.Fetch(adaptiveSize, adaptiveDeadline)
			if done != nil {
				done(d, err)
			}
		}()
	}
}

var rttSeries = regexp.MustCompile(`(?m)^wanpin_uplink_rtt_seconds\{family="ipv4",interface="wan\d",uplink="isp\d"\} `)

var weightSeries = regexp.MustCompile(`(?m)^wanpin_uplink_weight\{interface="wan(\d)",uplink="isp\d"\} (\S+)$`)

// weights reads the weights in force from the daemon's metrics.
func weights(l *netlab.Lab) (int, int, error) {
	out, err := l.Exec(l.Router, "curl", "-sS", "-m", "5", "http://"+adaptiveMetrics+"/metrics")
	if err != nil {
		return 0, 0, fmt.Errorf("metrics: %v: %s", err, out)
	}
	var w [3]int
	for _, m := range weightSeries.FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		v, _ := strconv.ParseFloat(m[2], 64)
		if i >= 1 && i <= 2 {
			w[i] = int(v)
		}
	}
	return w[1], w[2], nil
}
