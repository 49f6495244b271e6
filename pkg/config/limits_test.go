package config

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loadWithin runs Load in the background and fails the test if it has not
// returned within a deadline far above what it needs (a hang is what is
// tested, not speed): it returns the error and how long Load took.
func loadWithin(t *testing.T, path string) (time.Duration, error) {
	t.Helper()
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		cfg, err := Load(path)
		done <- result{cfg, err}
	}()
	select {
	case r := <-done:
		took := time.Since(start)
		if r.err == nil {
			t.Fatalf("Load(%s) accepted it: %+v", path, r.cfg)
		}
		return took, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Load(%s) still running after 10 s", path)
	}
	panic("unreachable")
}

// What is not a regular file is refused at once, naming the file and what
// it is: reading a FIFO would wait for a writer, /dev/zero never ends.
func TestLoadRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zeroLink := filepath.Join(dir, "zero.toml")
	if err := os.Symlink("/dev/zero", zeroLink); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link.toml")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir.toml")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.toml")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct{ path, what string }{
		{fifo, "a named pipe (FIFO)"},
		{fifoLink, "a named pipe (FIFO)"},
		{"/dev/zero", "a character device"},
		{zeroLink, "a character device"},
		{sub, "a directory"},
		{sock, "a socket"},
	} {
		took, err := loadWithin(t, c.path)
		t.Logf("%s: %v in %v", c.path, err, took)
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.path) || !strings.HasSuffix(err.Error(), c.what) {
			t.Errorf("%s: got %v, want ErrNotRegular naming the file and saying it is %s", c.path, err, c.what)
		}
	}
}

// A FIFO put in place of the file after it was checked: opening it does
// not wait for a writer, and what was opened is refused.
func TestReadRegularRefusesFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := readRegular(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("got %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opening the FIFO blocked")
	}
}

func TestLoadTooLarge(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.toml")
	// Sparse: no disk is used.
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	took, err := loadWithin(t, big)
	t.Logf("%v in %v", err, took)
	var pe *fs.PathError
	if !errors.Is(err, ErrTooLarge) || !errors.As(err, &pe) || pe.Path != big {
		t.Errorf("got %v, want ErrTooLarge naming the file", err)
	}
	// At the limit, it is read (and then refused for what it holds).
	if err := os.Truncate(big, MaxFileSize); err != nil {
		t.Fatal(err)
	}
	if data, err := readFile(big); err != nil || len(data) != MaxFileSize {
		t.Errorf("at the limit: %d bytes, %v", len(data), err)
	}
}
