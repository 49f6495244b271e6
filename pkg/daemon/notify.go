package daemon

import (
	"fmt"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (Type=notify) through
// go-systemd: READY once the first state is applied, RELOADING around a
// reload, STOPPING at teardown, and WATCHDOG from the loop itself, so a
// stuck loop stops petting the watchdog and systemd restarts the daemon.
type notifier struct{}

func newNotifier() *notifier { return &notifier{} }

// send sends one state; without NOTIFY_SOCKET (not run by systemd) it
// does nothing.
func (n *notifier) send(state string) error {
	if strings.HasPrefix(state, "RELOADING=1") {
		// systemd's Type=notify-reload protocol: the monotonic timestamp
		// lets systemd match the READY that ends the reload.
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		state = fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000)
	}
	_, err := sd.SdNotify(false, state)
	return err
}

// watchdogInterval is how often to pet the watchdog: half of
// WATCHDOG_USEC, or 0 when the watchdog is off (or meant for another
// process, by WATCHDOG_PID).
func (n *notifier) watchdogInterval() time.Duration {
	d, err := sd.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}
