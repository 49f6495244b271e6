package untrusted

import (
	"strings"
	"testing"
)

func TestText(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"3 rounds lost: 203.0.113.1 timeout", 64, "3 rounds lost: 203.0.113.1 timeout"},
		{"", 8, ""},
		{"\x1b[2J\x1b]0;pwned\x07", 64, "?[2J?]0;pwned?"},
		{"line\nforged=1\r\x7f", 64, "line?forged=1??"},
		{"é\u202e", 64, "??"},      // one replacement per rune
		{"a\xff\xfeb", 64, "a??b"}, // and per byte of invalid UTF-8
		{"0123456789", 10, "0123456789"},
		{"0123456789a", 10, "0123456..."},
		{"0123456789", 2, "01"},
		{"x", 0, ""},
	} {
		if got := Text(c.in, c.max); got != c.want {
			t.Errorf("Text(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

func TestTextBoundedWhateverTheInput(t *testing.T) {
	junk := "$(reboot); `id` \x1b[31m" + strings.Repeat("\x00\xff\u2028A", 10<<10)
	got := Text(junk, 256)
	if len(got) > 256 {
		t.Fatalf("%d bytes, want at most 256", len(got))
	}
	for i := 0; i < len(got); i++ {
		if got[i] < ' ' || got[i] > '~' {
			t.Fatalf("byte %#x at %d kept: %q", got[i], i, got)
		}
	}
	if !strings.HasSuffix(got, "...") {
		t.Errorf("a cut text should say so: %q", got)
	}
}
