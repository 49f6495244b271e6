package config

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The TOML library tells where a syntax error is, but not where a key is:
// its key positions are indexed by a path without array indexes, so every
// [[uplink]] element shares one entry. The locator below scans the text once
// and records the line of every table header, array element and key, so
// that semantic errors can point at the line to fix.
//
// The same scan runs before the library and bounds what the library will
// be given (limits.go): it counts tables, keys and array entries, measures
// nesting and key lengths, and stops at the first limit exceeded. It reads
// strings and comments as TOML does, so that nothing inside them counts.

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

// limitError is a limit of the file's shape exceeded, at a line.
type limitError struct {
	line int
	msg  string
}

func (e *limitError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// locate scans TOML text and returns the line index, or the first limit of
// limits.go the text exceeds. On text the TOML library accepts, the index
// is exact; on anything else it still terminates and returns what it could
// make out.
func locate(src []byte) (lineIndex, error) {
	sc, err := scan(src)
	if err != nil {
		return nil, err
	}
	return sc.ix, nil
}

// scan runs the scanner over src; the scanner keeps what it counted.
func scan(src []byte) (sc *scanner, err error) {
	sc = &scanner{s: src, line: 1, ix: lineIndex{}, arrays: map[string]int{}}
	defer func() {
		if r := recover(); r != nil {
			le, ok := r.(*limitError)
			if !ok {
				panic(r)
			}
			sc, err = nil, le
		}
	}()
	// Counted apart from the scan, which may read a malformed line break as
	// part of a string: on any syntax error the library splits the whole
	// text into lines, 16 bytes a line.
	lines := bytes.Count(src, []byte("\n"))
	if !bytes.HasSuffix(src, []byte("\n")) {
		lines++ // the last line has no line break
	}
	if lines > MaxLines {
		sc.fail(MaxLines+1, "more than %d lines", MaxLines)
	}
	// Skip a byte order mark, as the library does (UTF-16 ones included,
	// which some editors write in front of UTF-8 text).
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if bytes.HasPrefix(src, []byte(bom)) {
			sc.i = len(bom)
			break
		}
	}
	sc.document()
	return sc, nil
}

type scanner struct {
	s    []byte
	i    int
	line int
	ix   lineIndex
	// arrays counts the elements of each array of tables seen so far, by
	// its resolved path: a later header below it refers to the last one.
	arrays map[string]int

	// What limits.go bounds: the deepest path seen and how many tables,
	// key parts and array entries there were.
	depth, tables, keyParts, values int
}

// fail stops the scan: a limit is exceeded at line. The scan recurses
// into nested values; a panic, recovered by scan, leaves from any depth.
func (sc *scanner) fail(line int, format string, args ...any) {
	panic(&limitError{line: line, msg: fmt.Sprintf(format, args...)})
}

// in checks a path of depth parts, for a key, table or array entry that
// starts at line.
func (sc *scanner) in(depth, line int) {
	if depth > MaxDepth {
		sc.fail(line, "nesting deeper than %d levels (tables, arrays and dotted keys together): wanpin's own keys are at most 5 deep", MaxDepth)
	}
	sc.depth = max(sc.depth, depth)
}

// key joins a key's name to its table's path, checking the full name's
// length.
func (sc *scanner) key(path, name string, line int) string {
	path = joinKey(path, name)
	if len(path) > MaxKeyPath {
		sc.fail(line, "a key whose full name (its tables' names and its own) is longer than %d bytes", MaxKeyPath)
	}
	return path
}

// countTable counts one table header or inline table.
func (sc *scanner) countTable(line int) {
	if sc.tables++; sc.tables > maxTables {
		sc.fail(line, "more than %d tables: a valid file has at most %d uplinks (each with its health table) and %d policies",
			maxTables, MaxUplinks, MaxPolicies)
	}
}

// countValue counts one array entry.
func (sc *scanner) countValue(line int) {
	if sc.values++; sc.values > maxValues {
		sc.fail(line, "more than %d array entries: a valid file has at most %d policy entries, %d policies and %d uplinks with %d dns and %d health targets each",
			maxValues, MaxPolicyEntries, MaxPolicies, MaxUplinks, MaxDNS, MaxHealthTargets)
	}
}

func (sc *scanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *scanner) peek(off int) byte {
	if sc.i+off < len(sc.s) {
		return sc.s[sc.i+off]
	}
	return 0
}

// record notes the line of path, a key, table or array entry depth parts
// deep.
func (sc *scanner) record(path string, depth, line int) {
	sc.in(depth, line)
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
	table, depth := "", 0
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
			table, depth = sc.arrayHeader(sc.keys(), line)
		case sc.peek(0) == '[':
			sc.i++
			table, depth = sc.tableHeader(sc.keys(), line)
		default:
			sc.keyValue(table, depth)
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
// any array of tables on the way, and returns it with its depth.
// Tables it passes through that were not seen before are defined here
// implicitly: [a.b] defines a.
func (sc *scanner) resolve(keys []string, line int) (path string, depth int) {
	for _, k := range keys {
		path = sc.key(path, k, line)
		depth++
		if n, ok := sc.arrays[path]; ok {
			path = joinIndex(path, n-1)
			depth++
		}
		sc.record(path, depth, line)
	}
	return path, depth
}

func (sc *scanner) arrayHeader(keys []string, line int) (string, int) {
	if len(keys) == 0 {
		return "", 0
	}
	sc.countTable(line)
	path, depth := sc.resolve(keys[:len(keys)-1], line)
	path = sc.key(path, keys[len(keys)-1], line)
	depth++
	n := sc.arrays[path]
	sc.arrays[path] = n + 1
	sc.record(path, depth, line)
	elem := joinIndex(path, n)
	sc.record(elem, depth+1, line)
	return elem, depth + 1
}

func (sc *scanner) tableHeader(keys []string, line int) (string, int) {
	if len(keys) > 0 {
		sc.countTable(line)
	}
	return sc.resolve(keys, line)
}

// keyValue reads `key = value` and records the key, and within the value
// any array elements and inline table keys, below path, of depth parts.
func (sc *scanner) keyValue(path string, depth int) {
	line := sc.line
	keys := sc.keys()
	if len(keys) == 0 {
		return
	}
	// Dotted keys define their parents implicitly: record those too, so
	// that a problem with the parent table has a line.
	for _, k := range keys {
		path = sc.key(path, k, line)
		depth++
		sc.record(path, depth, line)
	}
	sc.skipBlank(false)
	if sc.peek(0) != '=' {
		return
	}
	sc.i++
	sc.skipBlank(false)
	sc.value(path, depth)
}

// keys reads a possibly dotted key, up to the '=' or the closing bracket,
// counting its parts.
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
		if len(keys) == MaxDepth {
			sc.fail(sc.line, "a key of more than %d dotted parts", MaxDepth)
		}
		if sc.keyParts++; sc.keyParts > maxKeys {
			sc.fail(sc.line, "more than %d keys (each part of a dotted key or table name counts): a valid file has at most %d uplinks and %d policies with their keys",
				maxKeys, MaxUplinks, MaxPolicies)
		}
		keys = append(keys, k)
		sc.skipBlank(false)
		if sc.peek(0) != '.' {
			return keys
		}
		sc.i++
	}
}

// value skips one value at path, depth parts deep, recording the elements
// of arrays and the keys of inline tables below it.
func (sc *scanner) value(path string, depth int) {
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
		sc.skipString('"')
	case sc.peek(0) == '\'':
		sc.i++
		sc.skipString('\'')
	case sc.peek(0) == '[':
		sc.i++
		sc.array(path, depth)
	case sc.peek(0) == '{':
		sc.countTable(sc.line)
		sc.i++
		sc.inlineTable(path, depth)
	default:
		start := sc.i
		sc.scalar()
		// A date and its time may be parted by a space: 1979-05-27 07:32:00
		// is one value.
		if sc.i-start == len("1979-05-27") && sc.s[start+4] == '-' && sc.peek(0) == ' ' && isDigit(sc.peek(1)) {
			sc.i++
			sc.scalar()
		}
	}
}

// scalar skips a number, boolean, date or time: none of them contains
// these.
func (sc *scanner) scalar() {
	for !sc.eof() && !strings.ContainsRune(" \t\r\n,]}#", rune(sc.s[sc.i])) {
		sc.i++
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (sc *scanner) hasPrefix(p string) bool {
	return strings.HasPrefix(string(sc.s[sc.i:min(sc.i+len(p), len(sc.s))]), p)
}

// array reads the elements of the array at path. Each element is checked
// for depth before its value is read: nesting cannot recurse further than
// MaxDepth.
func (sc *scanner) array(path string, depth int) {
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
			sc.countValue(sc.line)
			elem := joinIndex(path, n)
			sc.record(elem, depth+1, sc.line)
			sc.value(elem, depth+1)
			n++
			if sc.i == start { // not a value: get past it
				sc.advance()
			}
		}
	}
}

// inlineTable reads { k = v, ... }. TOML 1.1, which the library accepts,
// allows newlines and comments inside.
func (sc *scanner) inlineTable(path string, depth int) {
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
			sc.keyValue(path, depth)
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

// skipString skips a one-line string value after its opening quote q:
// unlike a key's, its content is not needed.
func (sc *scanner) skipString(q byte) {
	for !sc.eof() {
		switch c := sc.s[sc.i]; {
		case c == q:
			sc.i++
			return
		case c == '\n': // unterminated; the library would have refused it
			return
		case c == '\\' && q == '"':
			// The escaped byte cannot end the string (\" and \\ are the
			// ones that matter).
			sc.i++
			if !sc.eof() && sc.s[sc.i] != '\n' {
				sc.i++
			}
		default:
			sc.i++
		}
	}
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
