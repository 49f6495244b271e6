// Package untrusted makes text that came from outside the router safe to
// carry: a probe target's answer quoted in an error, a name a peer or a
// DHCP server chose. Such text ends up in logs, the status, D-Bus replies,
// metrics labels and the environment of hooks that run as root; there a
// terminal escape rewrites an operator's screen, a newline forges a log
// line, and 10 KB of junk fills every line that mentions it.
package untrusted

import (
	"strings"
	"unicode/utf8"
)

// Replacement stands for every rune Text does not keep. A question mark
// rather than an escape such as \x1b: echo -e and printf %b would turn an
// escape back into the byte it stands for.
const Replacement = '?'

// Text returns s as printable ASCII (space to '~') of at most max bytes.
// Every other rune (control bytes, DEL, anything non-ASCII, each byte of
// invalid UTF-8) becomes Replacement; a text cut to max ends in "...". It
// reads no more of s than it needs, so a huge s costs no more than max.
func Text(s string, max int) string {
	if max <= 0 {
		return ""
	}
	if len(s) <= max && printable(s) {
		return s // the common case, without a copy
	}
	var b strings.Builder
	b.Grow(min(len(s), max+1))
	for len(s) > 0 && b.Len() <= max {
		r, n := utf8.DecodeRuneInString(s)
		s = s[n:]
		if r < ' ' || r > '~' {
			r = Replacement
		}
		b.WriteByte(byte(r))
	}
	out := b.String()
	if len(out) > max {
		// There was more: say so within the bound.
		const more = "..."
		if max <= len(more) {
			return out[:max]
		}
		if len(out) > max-len(more) {
			out = out[:max-len(more)]
		}
		out += more
	}
	return out
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' {
			return false
		}
	}
	return true
}
