package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// junk is what a hostile probe target or a broken one might say: shell
// syntax, terminal escapes (raw and as Go quotes them), a forged log line
// and 10 KB of bytes that are not text.
var junk = "$(reboot); `id` \x1b[2J\x1b]0;pwned\x07 \\x1b[31m\nlevel=ERROR msg=forged " +
	strings.Repeat("\x00\xff\u202e", 10<<10/6)

// wantPrintable fails unless s is printable ASCII of at most max bytes.
func wantPrintable(t *testing.T, what, s string, max int) {
	t.Helper()
	if len(s) > max {
		t.Errorf("%s: %d bytes, want at most %d", what, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			t.Errorf("%s: byte %#x at %d: %q", what, s[i], i, s)
			return
		}
	}
}

// shortForms are what Go's HTTP client says of the answers below.
var shortForms = map[string]bool{"malformed HTTP status code": true, "missing colon": true,
	"malformed MIME header line": true, "HTTP 503": true}

// An HTTP target answering with junk where Go expects a status line or a
// header puts none of its bytes into the short form reasons are made of
// (Go quotes the offending line, and the short form used to be what came
// after its last ": ", inside the quote). The listener is on loopback:
// the probe sets no mark and binds no device without a Spec asking for it.
func TestHTTPAnswerBytesStayOut(t *testing.T) {
	for _, answer := range []string{
		junk + "\r\n\r\n",
		"HTTP/1.1 200 OK\r\nGood: x\r\n" + junk + ": `id`\r\n\r\n",
		"HTTP/1.1 2\x1b[2J0 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: zz\x1b: $(id)\r\n\r\n",
		"HTTP/1.1 503 " + junk[:200] + "\r\nContent-Length: 0\r\n\r\n",
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 4096)
			c.Read(buf) // the request, whatever it is
			c.Write([]byte(answer))
		}()
		ps := newProbeSet(Spec{}, nil)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		addr := netip.MustParseAddrPort(ln.Addr().String())
		_, err = ps.http(ctx, addr.Addr(), "http://"+addr.String()+"/")
		cancel()
		ln.Close()
		if err == nil {
			t.Fatalf("answer %.40q counted as an answer", answer)
		}
		// The short form is Go's words only: none of the answer's.
		short := shortErr(err)
		if !shortForms[short] {
			t.Errorf("answer %.40q: short form %q", answer, short)
		}
		// The long form (Error) quotes the answer, as printable text.
		wantPrintable(t, "long form", err.Error(), maxReason+200)
	}
}

// Whatever a probe's error says (here a caller's own probes return the
// junk), the verdict's reason is printable and bounded: it goes to logs,
// status, D-Bus and the hooks' WANPIN_REASON as it is. Printable shell
// syntax stays (it is text); escapes and line breaks do not.
func TestReasonFromJunkPrintableAndBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := func(context.Context) (time.Duration, error) { return 0, errors.New("probe: " + junk) }
		failShort := func(context.Context) (time.Duration, error) {
			return 0, &probeError{short: junk, long: junk}
		}
		var targets []Target
		for i := range 20 {
			p := fail
			if i%2 == 1 {
				p = failShort
			}
			targets = append(targets, Target{Name: "203.0.113." + string(rune('a'+i)), Probe: p})
		}
		events := make(chan Event, 4)
		m := StartTargets(t.Context(), Spec{Uplink: "dsl", Config: defaults()}, targets, events, nil)
		defer m.Stop()
		ev := waitEvent(t, events, time.Minute)
		if ev.Healthy {
			t.Fatalf("healthy: %+v", ev)
		}
		if !strings.HasPrefix(ev.Reason, "2 rounds lost: 203.0.113.a $(reboot); `id` ?[2J?]0;pwned? ") {
			t.Errorf("reason %.80q: lost its start", ev.Reason)
		}
		wantPrintable(t, "reason", ev.Reason, maxReason)
	})
}
