package daemon

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNotifier(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", "")
	n := newNotifier()
	if iv := n.watchdogInterval(); iv != 5*time.Second {
		t.Errorf("watchdog interval %v, want half of 10 s", iv)
	}
	for _, st := range []string{"READY=1", "RELOADING=1", "WATCHDOG=1", "STOPPING=1"} {
		if err := n.send(st); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	buf := make([]byte, 256)
	for i := 0; i < 4; i++ {
		conn.SetReadDeadline(time.Now().Add(time.Second))
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(buf[:k]))
	}
	if got[0] != "READY=1" || !strings.HasPrefix(got[1], "RELOADING=1\nMONOTONIC_USEC=") || got[2] != "WATCHDOG=1" || got[3] != "STOPPING=1" {
		t.Errorf("messages: %q", got)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := newNotifier().send("READY=1"); err != nil {
		t.Errorf("without systemd: %v", err)
	}
}

// The watchdog is another process's when WATCHDOG_PID names it.
func TestWatchdogOfAnotherProcess(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", "1")
	if iv := newNotifier().watchdogInterval(); iv != 0 {
		t.Errorf("watchdog interval %v for another pid's watchdog", iv)
	}
}
