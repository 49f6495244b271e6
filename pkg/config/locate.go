package config

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// The TOML library tells where a syntax error is, but not where a key is:
// its key positions are indexed by a path without array indexes, so every
// [[uplink]] element shares one entry. The locator below scans the text once
// and records the line of every table header, array element and key, so
// that semantic errors can point at the line to fix.

// lineIndex maps a key path to the 1-based line where that key, table header
// or array element starts. Paths name each key the way toml.Key.String does
// (bare when possible, else quoted) joined by ".", and array elements by a
// 0-based index: uplink[0].weight, policy[1].ports[2], "a.b".c.
type lineIndex map[string]int

// line is the line of path, or 0 when it was not seen.
func (ix lineIndex) line(path string) int { return ix[path] }

// joinKey appends the key name to path.
func joinKey(path, name string) string {
	if path == "" {
		return quoteKey(name)
	}
	return path + "." + quoteKey(name)
}

// joinIndex appends an array index to path.
func joinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

func quoteKey(name string) string {
	if name == "" {
		return `""`
	}
	for i := 0; i < len(name); i++ {
		if !isBareKeyChar(name[i]) {
			return strconv.Quote(name)
		}
	}
	return name
}

func isBareKeyChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// locate scans TOML text. It is meant for text the TOML library accepted;
// on anything else it still terminates and returns what it could make out.
func locate(src []byte) lineIndex {
	sc := &scanner{s: src, line: 1, ix: lineIndex{}, arrays: map[string]int{}}
	// Skip a byte order mark, as the library does (UTF-16 ones included,
	// which some editors write in front of UTF-8 text).
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if strings.HasPrefix(string(src), bom) {
			sc.i = len(bom)
			break
		}
	}
	sc.document()
	return sc.ix
}

type scanner struct {
	s    []byte
	i    int
	line int
	ix   lineIndex
	// arrays counts the elements of each array of tables seen so far, by
	// its resolved path: a later header below it refers to the last one.
	arrays map[string]int
}

func (sc *scanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *scanner) peek(off int) byte {
	if sc.i+off < len(sc.s) {
		return sc.s[sc.i+off]
	}
	return 0
}

func (sc *scanner) record(path string, line int) {
	if _, ok := sc.ix[path]; !ok && path != "" {
		sc.ix[path] = line
	}
}

// advance moves past one byte, counting lines.
func (sc *scanner) advance() {
	if sc.s[sc.i] == '\n' {
		sc.line++
	}
	sc.i++
}

// skipBlank skips spaces and tabs, and with newlines also line breaks and
// comments.
func (sc *scanner) skipBlank(newlines bool) {
	for !sc.eof() {
		switch c := sc.s[sc.i]; {
		case c == ' ' || c == '\t' || c == '\r':
			sc.i++
		case newlines && c == '\n':
			sc.advance()
		case newlines && c == '#':
			sc.skipComment()
		default:
			return
		}
	}
}

func (sc *scanner) skipComment() {
	for !sc.eof() && sc.s[sc.i] != '\n' {
		sc.i++
	}
}

func (sc *scanner) document() {
	table := ""
	for {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		start := sc.i
		line := sc.line
		switch {
		case sc.peek(0) == '[' && sc.peek(1) == '[':
			sc.i += 2
			table = sc.arrayHeader(sc.keys(), line)
		case sc.peek(0) == '[':
			sc.i++
			table = sc.tableHeader(sc.keys(), line)
		default:
			sc.keyValue(table)
		}
		// The rest of a header or key/value line is a comment at most;
		// skipping to the line end also gets past anything malformed.
		if sc.i == start {
			sc.i++
		}
		sc.skipRestOfLine()
	}
}

// skipRestOfLine skips to the end of the current line, outside any value.
func (sc *scanner) skipRestOfLine() {
	for !sc.eof() && sc.s[sc.i] != '\n' {
		sc.i++
	}
}

// resolve turns header keys into a path, stepping into the last element of
// any array of tables on the way.
// Tables it passes through that were not seen before are defined here
// implicitly: [a.b] defines a.
func (sc *scanner) resolve(path string, keys []string, line int) string {
	for _, k := range keys {
		path = joinKey(path, k)
		if n, ok := sc.arrays[path]; ok {
			path = joinIndex(path, n-1)
		}
		sc.record(path, line)
	}
	return path
}

func (sc *scanner) arrayHeader(keys []string, line int) string {
	if len(keys) == 0 {
		return ""
	}
	path := joinKey(sc.resolve("", keys[:len(keys)-1], line), keys[len(keys)-1])
	n := sc.arrays[path]
	sc.arrays[path] = n + 1
	sc.record(path, line)
	elem := joinIndex(path, n)
	sc.record(elem, line)
	return elem
}

func (sc *scanner) tableHeader(keys []string, line int) string {
	return sc.resolve("", keys, line)
}

// keyValue reads `key = value` and records the key, and within the value
// any array elements and inline table keys, below path.
func (sc *scanner) keyValue(path string) {
	line := sc.line
	keys := sc.keys()
	if len(keys) == 0 {
		return
	}
	// Dotted keys define their parents implicitly: record those too, so
	// that a problem with the parent table has a line.
	for _, k := range keys {
		path = joinKey(path, k)
		sc.record(path, line)
	}
	sc.skipBlank(false)
	if sc.peek(0) != '=' {
		return
	}
	sc.i++
	sc.skipBlank(false)
	sc.value(path)
}

// keys reads a possibly dotted key, up to the '=' or the closing bracket.
func (sc *scanner) keys() []string {
	var keys []string
	for {
		sc.skipBlank(false)
		if sc.eof() {
			return keys
		}
		var k string
		switch c := sc.s[sc.i]; {
		case c == '"':
			sc.i++
			k = sc.basicString()
		case c == '\'':
			sc.i++
			k = sc.literalString()
		case isBareKeyChar(c):
			start := sc.i
			for !sc.eof() && isBareKeyChar(sc.s[sc.i]) {
				sc.i++
			}
			k = string(sc.s[start:sc.i])
		default:
			return keys
		}
		keys = append(keys, k)
		sc.skipBlank(false)
		if sc.peek(0) != '.' {
			return keys
		}
		sc.i++
	}
}

// value skips one value, recording the elements of arrays and the keys of
// inline tables below path.
func (sc *scanner) value(path string) {
	switch {
	case sc.eof():
	case sc.hasPrefix(`"""`):
		sc.i += 3
		sc.multiLineString('"')
	case sc.hasPrefix(`'''`):
		sc.i += 3
		sc.multiLineString('\'')
	case sc.peek(0) == '"':
		sc.i++
		sc.basicString()
	case sc.peek(0) == '\'':
		sc.i++
		sc.literalString()
	case sc.peek(0) == '[':
		sc.i++
		sc.array(path)
	case sc.peek(0) == '{':
		sc.i++
		sc.inlineTable(path)
	default:
		// Numbers, booleans and dates: none of them contains these.
		for !sc.eof() && !strings.ContainsRune(" \t\r\n,]}#", rune(sc.s[sc.i])) {
			sc.i++
		}
	}
}

func (sc *scanner) hasPrefix(p string) bool {
	return strings.HasPrefix(string(sc.s[sc.i:min(sc.i+len(p), len(sc.s))]), p)
}

func (sc *scanner) array(path string) {
	for n := 0; ; {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		switch sc.s[sc.i] {
		case ']':
			sc.i++
			return
		case ',':
			sc.i++
		default:
			start := sc.i
			elem := joinIndex(path, n)
			sc.record(elem, sc.line)
			sc.value(elem)
			n++
			if sc.i == start { // not a value: get past it
				sc.advance()
			}
		}
	}
}

// inlineTable reads { k = v, ... }. TOML 1.1, which the library accepts,
// allows newlines and comments inside.
func (sc *scanner) inlineTable(path string) {
	for {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		switch sc.s[sc.i] {
		case '}':
			sc.i++
			return
		case ',':
			sc.i++
		default:
			start := sc.i
			sc.keyValue(path)
			if sc.i == start {
				sc.advance()
			}
		}
	}
}

// basicString reads a "..." string after its opening quote and returns its
// value: keys may be written with escapes and must match the decoded name.
func (sc *scanner) basicString() string {
	var b strings.Builder
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case c == '"':
			sc.i++
			return b.String()
		case c == '\n': // unterminated; the library would have refused it
			return b.String()
		case c == '\\':
			sc.i++
			sc.escape(&b)
		default:
			b.WriteByte(c)
			sc.i++
		}
	}
	return b.String()
}

// TOML 1.1 escapes, \e and \xHH included: the library accepts them.
var (
	simpleEscapes = map[byte]byte{'b': '\b', 't': '\t', 'n': '\n', 'f': '\f', 'r': '\r', 'e': 0x1b, '"': '"', '\\': '\\'}
	hexEscapes    = map[byte]int{'x': 2, 'u': 4, 'U': 8}
)

// escape decodes the escape sequence after a backslash.
func (sc *scanner) escape(b *strings.Builder) {
	if sc.eof() {
		return
	}
	c := sc.s[sc.i]
	sc.i++
	if r, ok := simpleEscapes[c]; ok {
		b.WriteByte(r)
		return
	}
	digits := hexEscapes[c]
	if digits == 0 || sc.i+digits > len(sc.s) {
		b.WriteByte(c)
		return
	}
	n, err := strconv.ParseUint(string(sc.s[sc.i:sc.i+digits]), 16, 32)
	if err != nil || !utf8.ValidRune(rune(n)) {
		b.WriteByte(c)
		return
	}
	sc.i += digits
	b.WriteRune(rune(n))
}

// literalString reads a '...' string after its opening quote.
func (sc *scanner) literalString() string {
	start := sc.i
	for !sc.eof() && sc.s[sc.i] != '\'' && sc.s[sc.i] != '\n' {
		sc.i++
	}
	k := string(sc.s[start:sc.i])
	if sc.peek(0) == '\'' {
		sc.i++
	}
	return k
}

// multiLineString skips a multi-line string after its opening delimiter,
// counting the lines inside: nothing in it is a key.
func (sc *scanner) multiLineString(q byte) {
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case q == '"' && c == '\\':
			sc.i++
			if !sc.eof() {
				sc.advance() // an escaped quote does not close; a line-ending backslash still counts the line
			}
		case c == q && sc.peek(1) == q && sc.peek(2) == q:
			sc.i += 3
			// Up to two more quotes belong to the content: """a"""""
			for k := 0; k < 2 && sc.peek(0) == q; k++ {
				sc.i++
			}
			return
		default:
			sc.advance()
		}
	}
}
