package daemon

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (Type=notify): READY once
// the first state is applied, RELOADING around a reload, STOPPING at
// teardown, and WATCHDOG from the loop itself, so a stuck loop stops
// petting the watchdog and systemd restarts the daemon.
type notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration // half of WATCHDOG_USEC; 0 when off
}

func newNotifier() *notifier {
	n := &notifier{}
	if path := os.Getenv("NOTIFY_SOCKET"); path != "" {
		if path[0] == '@' {
			path = "\x00" + path[1:] // abstract socket
		}
		n.addr = &net.UnixAddr{Name: path, Net: "unixgram"}
	}
	if usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && usec > 0 {
		pid, perr := strconv.Atoi(os.Getenv("WATCHDOG_PID"))
		if perr != nil || pid == os.Getpid() {
			n.watchdog = time.Duration(usec) * time.Microsecond / 2
		}
	}
	return n
}

func (n *notifier) send(state string) error {
	if n.addr == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notifying systemd: %w", err)
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

func (n *notifier) ready() error { return n.send("READY=1") }

// reloading follows systemd's Type=notify-reload protocol too: the
// monotonic timestamp lets systemd match the READY that ends the reload.
func (n *notifier) reloading() error {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return n.send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
}

func (n *notifier) stopping() error { return n.send("STOPPING=1") }

func (n *notifier) pet() error { return n.send("WATCHDOG=1") }
