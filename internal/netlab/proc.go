package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a long-running process inside one of the lab's namespaces.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *os.File
}

// Start starts a process inside ns with its output appended to logPath.
// It uses nsenter --net rather than `ip netns exec`: the latter remounts
// /sys, which hides the cgroup v2 tree that service policies resolve.
// The process is killed when the lab closes, if it is still running.
func (l *Lab) Start(ns, logPath string, args ...string) (*Proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	full := append([]string{"--net=/run/netns/" + ns, "--"}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, and killed if the test process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("lab: starting %v in %s: %w", args, ns, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{}), log: log}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Pid is the process id (nsenter execs the command, so it is the command's).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to end and returns its error.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("lab: process %d still running after %v", p.Pid(), timeout)
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Close kills the process group if it is still running and waits for it.
func (p *Proc) Close() {
	if !p.Exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}
