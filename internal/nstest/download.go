package nstest

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// ServeZeros listens on addr (host:port) in the network namespace fd,
// with MPTCP (which takes plain TCP as well), and sends zeros to every
// connection until it closes. The listener closes when the test ends.
func ServeZeros(t testing.TB, fd int, addr string) {
	t.Helper()
	var ln net.Listener
	if err := Do(fd, func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// Download is a TCP connection read to its end by a goroutine that
// counts the bytes.
type Download struct {
	Conn  net.Conn
	Bytes atomic.Int64
	// Done receives the read error that ended the download; nil when
	// it was closed here.
	Done chan error
}

// StartDownload connects from the namespace fd to addr (host:port),
// from the source address src ("": the kernel's choice), with MPTCP or
// plain TCP, and reads until the connection ends; the test fails if
// the socket is not what was asked for. It is aborted when the test
// ends.
func StartDownload(t testing.TB, fd int, src, addr string, mptcp bool) *Download {
	t.Helper()
	var conn net.Conn
	if err := Do(fd, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		d.SetMultipathTCP(mptcp)
		conn, err = d.Dial("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	if got, err := conn.(*net.TCPConn).MultipathTCP(); err != nil || got != mptcp {
		conn.Close()
		t.Fatalf("MultipathTCP() = %v, %v; want %v", got, err, mptcp)
	}
	d := &Download{Conn: conn, Done: make(chan error, 1)}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			d.Bytes.Add(int64(n))
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					err = nil
				}
				d.Done <- err
				return
			}
		}
	}()
	t.Cleanup(d.Abort)
	return d
}

// Abort closes with a reset (MP_FASTCLOSE for MPTCP). A plain close
// leaves the reader's side in FIN-WAIT-2 while the server's data keeps
// arriving into a window nobody reads: the server's writes block, and
// the subflows stay established until the FIN timeout.
func (d *Download) Abort() {
	_ = d.Conn.(*net.TCPConn).SetLinger(0)
	d.Conn.Close()
}

// More waits until the download has read n more bytes, failing if it
// ends first or if within bound it has not (the bound is a safety net,
// not a measurement).
func (d *Download) More(t testing.TB, n int64, bound time.Duration, what string) {
	t.Helper()
	start := d.Bytes.Load()
	deadline := time.Now().Add(bound)
	for {
		select {
		case err := <-d.Done:
			t.Fatalf("%s: the download ended: %v", what, err)
		default:
		}
		got := d.Bytes.Load() - start
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d bytes read in %v, want %d", what, got, bound, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
