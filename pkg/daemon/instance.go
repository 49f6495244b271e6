package daemon

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// InstanceSocket is the abstract unix socket a running daemon listens
// on, one per network namespace: the abstract socket namespace belongs
// to the network namespace, so the lock is per router (a lab's
// namespaces each have their own), needs no file (none under /run to
// go stale or to be writable under ProtectSystem=strict) and is released
// by the kernel when the daemon dies, however it dies.
const InstanceSocket = "@wanpin-daemon"

// instanceLock is the held socket. Connections to it are accepted and
// closed at once: they are only how another `wanpin run` learns the
// holder's pid (SO_PEERCRED), and unaccepted ones would pile up.
type instanceLock struct{ ln *net.UnixListener }

// lockInstance takes the namespace's instance socket, or says which
// process holds it. It is the first thing a daemon does, before any
// netlink connection: a second `wanpin run` must change nothing (its
// SIGTERM used to remove the first daemon's rules and routes).
func lockInstance() (*instanceLock, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: InstanceSocket, Net: "unix"})
	if err == nil {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return // closed
				}
				c.Close()
			}
		}()
		return &instanceLock{ln: ln}, nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("taking the instance socket %s: %w", InstanceSocket, err)
	}
	if pid, err := instanceHolder(); err == nil {
		return nil, fmt.Errorf("another wanpin (pid %d) already runs in this network namespace: one daemon per router", pid)
	}
	return nil, errors.New("another wanpin already runs in this network namespace (it holds " + InstanceSocket + "): one daemon per router")
}

// instanceHolder is the pid of the process listening on the instance
// socket: for a unix stream connection the kernel gives the connecting
// side the listener's credentials, accepted or not.
func instanceHolder() (int32, error) {
	c, err := net.DialTimeout("unix", InstanceSocket, 200*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Pid, nil
}

func (l *instanceLock) release() {
	if l != nil {
		l.ln.Close()
	}
}
