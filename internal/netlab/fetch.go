package netlab

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Shape limits what ISP i sends toward the router (the customer's
// downloads) to rate, as tc writes it ("80mbit": 80,000,000 bit/s), with
// a token bucket filter on the ISP's side of the customer link, as an
// ISP's shaper does: up to 50 ms of queue, then drops. Called again it
// changes the rate in place; connections keep flowing. The qdisc goes
// with the ISP's namespace.
func (l *Lab) Shape(i int, rate string) error {
	out, err := l.Exec(l.ISP(i), "tc", "qdisc", "replace", "dev", "cust", "root",
		"tbf", "rate", rate, "burst", "64kb", "latency", "50ms")
	if err != nil {
		return fmt.Errorf("lab: shaping ISP %d to %s: %v: %s", i, rate, err, strings.TrimSpace(out))
	}
	return nil
}

// Fetch downloads size bytes of the server's stream service (ServerAddr4)
// from the LAN host, as one new connection, and returns how long it took
// from the dial to the last byte. The stream service sends at most 64 KiB
// every 10 ms (about 52 Mbit/s) per connection.
func (l *Lab) Fetch(size int64, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var conn net.Conn
	err := InNetNS(l.LAN, func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		conn, err = d.Dial("tcp", net.JoinHostPort(ServerAddr4, fmt.Sprint(PortStream)))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("lab: fetch: %w", err)
	}
	defer conn.Close()
	conn.SetReadDeadline(start.Add(timeout))
	if _, err := io.CopyN(io.Discard, conn, size); err != nil {
		return 0, fmt.Errorf("lab: fetch of %d bytes: %w", size, err)
	}
	return time.Since(start), nil
}
