package quota

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	_ "time/tzdata" // the zones below, whatever the machine has
)

func TestParseSize(t *testing.T) {
	for s, want := range map[string]uint64{
		"20GB": 20e9, "10MB": 10e6, "1 kB": 1000, "512B": 512, "3TB": 3e12,
		"1KiB": 1024, "2MiB": 2 << 20, "1.5GiB": 3 << 29, "1TiB": 1 << 40,
		"1.5GB": 1.5e9, " 7 MB ": 7e6, "0.001kB": 1,
	} {
		got, err := ParseSize(s)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for s, want := range map[string]string{
		"20":          `"20" has no unit`,
		"20KB":        `unit "KB" is not one of B, kB`,
		"20gb":        `unit "gb" is not one of`,
		"20 G":        `unit "G" is not one of`,
		"GB":          `is not a size`,
		"":            `is not a size`,
		"-1GB":        `is not a size`,
		"1.2.3GB":     `is not a number`,
		"1.GB":        `is not a number`,
		"0.5B":        `not a whole number of bytes`,
		"0GB":         `at least 1 byte`,
		"99999999TiB": `too large`,
		"1e3GB":       `unit "e3GB" is not one of`,
	} {
		if _, err := ParseSize(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q): %v, want %q", s, err, want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 999: "999 B", 1000: "1 kB", 10_500_000: "10.5 MB", 20e9: "20 GB", 1_234_567: "1.23 MB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestBounds(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	utc := time.UTC
	d := func(loc *time.Location, y int, m time.Month, day, h, min int) time.Time {
		return time.Date(y, m, day, h, min, 0, 0, loc)
	}
	for _, c := range []struct {
		name        string
		at          time.Time
		p           Period
		day         int
		start, next time.Time
	}{
		{"monthly, day 1", d(utc, 2026, 12, 1, 12, 0), Monthly, 1, d(utc, 2026, 12, 1, 0, 0), d(utc, 2027, 1, 1, 0, 0)},
		{"the first instant of a period is in it", d(utc, 2026, 12, 1, 0, 0), Monthly, 1, d(utc, 2026, 12, 1, 0, 0), d(utc, 2027, 1, 1, 0, 0)},
		{"the last instant of one is not in the next", d(utc, 2026, 11, 30, 23, 59), Monthly, 1, d(utc, 2026, 11, 1, 0, 0), d(utc, 2026, 12, 1, 0, 0)},
		{"before the reset day: last month's", d(utc, 2026, 12, 10, 8, 0), Monthly, 15, d(utc, 2026, 11, 15, 0, 0), d(utc, 2026, 12, 15, 0, 0)},
		{"before the reset day in January: December's", d(utc, 2027, 1, 3, 8, 0), Monthly, 15, d(utc, 2026, 12, 15, 0, 0), d(utc, 2027, 1, 15, 0, 0)},
		{"day 31 in February: its last day", d(utc, 2027, 2, 20, 0, 0), Monthly, 31, d(utc, 2027, 1, 31, 0, 0), d(utc, 2027, 2, 28, 0, 0)},
		{"on February's clamped day", d(utc, 2027, 2, 28, 1, 0), Monthly, 31, d(utc, 2027, 2, 28, 0, 0), d(utc, 2027, 3, 31, 0, 0)},
		{"day 31 in a leap February", d(utc, 2028, 2, 29, 6, 0), Monthly, 31, d(utc, 2028, 2, 29, 0, 0), d(utc, 2028, 3, 31, 0, 0)},
		{"day 30 after February", d(utc, 2027, 3, 5, 0, 0), Monthly, 30, d(utc, 2027, 2, 28, 0, 0), d(utc, 2027, 3, 30, 0, 0)},
		{"day 31 in a 30-day month", d(utc, 2026, 4, 30, 12, 0), Monthly, 31, d(utc, 2026, 4, 30, 0, 0), d(utc, 2026, 5, 31, 0, 0)},
		{"daily", d(utc, 2026, 12, 31, 23, 59), Daily, 1, d(utc, 2026, 12, 31, 0, 0), d(utc, 2027, 1, 1, 0, 0)},
		// Local midnight, not UTC's: 00:30 in Berlin is 23:30 UTC the day before.
		{"local midnight", d(berlin, 2026, 12, 1, 0, 30), Monthly, 1, d(berlin, 2026, 12, 1, 0, 0), d(berlin, 2027, 1, 1, 0, 0)},
		{"daily across a DST change (a 23-hour day)", d(berlin, 2026, 3, 29, 12, 0), Daily, 1, d(berlin, 2026, 3, 29, 0, 0), d(berlin, 2026, 3, 30, 0, 0)},
		{"monthly across a DST change", d(berlin, 2026, 4, 1, 0, 0), Monthly, 1, d(berlin, 2026, 4, 1, 0, 0), d(berlin, 2026, 5, 1, 0, 0)},
	} {
		start, next := Bounds(c.at, c.p, c.day)
		if !start.Equal(c.start) || !next.Equal(c.next) {
			t.Errorf("%s: Bounds(%v) = %v, %v; want %v, %v", c.name, c.at, start, next, c.start, c.next)
		}
		if c.at.Before(start) || !c.at.Before(next) {
			t.Errorf("%s: %v is not in [%v, %v)", c.name, c.at, start, next)
		}
	}
	if _, next := Bounds(d(berlin, 2026, 3, 29, 12, 0), Daily, 1); next.Sub(d(berlin, 2026, 3, 29, 0, 0)) != 23*time.Hour {
		t.Errorf("the DST day is not 23 hours long")
	}
}

// Every moment of two years falls in exactly one period, and periods
// follow each other without gaps, for every reset day.
func TestBoundsContiguous(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	for day := 1; day <= 31; day++ {
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, berlin)
		start, next := Bounds(at, Monthly, day)
		for range 24 {
			s2, n2 := Bounds(next, Monthly, day)
			if !s2.Equal(next) || !n2.After(s2) {
				t.Fatalf("day %d: the period after [%v, %v) is [%v, %v)", day, start, next, s2, n2)
			}
			if mid := s2.Add(n2.Sub(s2) / 2); !func() bool { s, _ := Bounds(mid, Monthly, day); return s.Equal(s2) }() {
				t.Fatalf("day %d: %v not in [%v, %v)", day, mid, s2, n2)
			}
			start, next = s2, n2
		}
	}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	if got, err := Load(dir); got != nil || err != nil {
		t.Fatalf("no file: %v, %v", got, err)
	}
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600))
	want := map[string]Usage{"lte": {PeriodStart: start, Used: 10_500_000}, "dsl": {PeriodStart: start, Used: 0}}
	if err := Save(dir, want, start.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil || len(got) != 2 || got["lte"].Used != 10_500_000 || !got["lte"].PeriodStart.Equal(start) {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, want)
	}
	path := filepath.Join(dir, FileName)
	var before syscall.Stat_t
	if err := syscall.Stat(path, &before); err != nil {
		t.Fatal(err)
	}
	// A write is a new file renamed over the old one, never the old one
	// rewritten in place (a crash would leave half of it); nothing else
	// stays in the directory.
	want["lte"] = Usage{PeriodStart: start, Used: 11_000_000}
	if err := Save(dir, want, start.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var after syscall.Stat_t
	syscall.Stat(path, &after)
	if after.Ino == before.Ino {
		t.Errorf("the file was rewritten in place (inode %d)", after.Ino)
	}
	if got, _ := Load(dir); got["lte"].Used != 11_000_000 {
		t.Errorf("after the second save: %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left in the directory: %v", entries)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
	// What a crash in the middle of a write leaves, a temporary file,
	// changes nothing.
	os.WriteFile(filepath.Join(dir, "."+FileName+".123"), []byte(`{"format": "wanpin-quo`), 0o600)
	if got, err := Load(dir); err != nil || got["lte"].Used != 11_000_000 {
		t.Errorf("with a stray temporary file: %+v, %v", got, err)
	}
}

// A corrupt or foreign file is an error for the log, never counts.
func TestStoreBadFiles(t *testing.T) {
	for name, c := range map[string]struct{ text, want string }{
		"truncated":  {`{"format": "wanpin-quota/1", "uplinks": {"lte": {"period_st`, "corrupt"},
		"garbage":    {"\x00\x01\x02", "corrupt"},
		"empty":      {"", "corrupt"},
		"foreign":    {`{"format": "something-else/3", "uplinks": {}}`, "not a wanpin quota file"},
		"no format":  {`{"uplinks": {"lte": {"period_start": "2026-12-01T00:00:00Z", "used_bytes": 5}}}`, "not a wanpin quota file"},
		"unknown":    {`{"format": "wanpin-quota/1", "uplinks": {}, "extra": 1}`, "corrupt"},
		"negative":   {`{"format": "wanpin-quota/1", "uplinks": {"lte": {"period_start": "2026-12-01T00:00:00Z", "used_bytes": -5}}}`, "corrupt"},
		"no period":  {`{"format": "wanpin-quota/1", "uplinks": {"lte": {"used_bytes": 5}}}`, "no period_start"},
		"not a list": {`[1, 2]`, "corrupt"},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, FileName), []byte(c.text), 0o644)
		got, err := Load(dir)
		if got != nil || err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), FileName) {
			t.Errorf("%s: %v, %v; want an error with %q naming the file", name, got, err, c.want)
		}
	}
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, FileName), 0o755)
	if got, err := Load(dir); got != nil || err == nil {
		t.Errorf("a directory: %v, %v", got, err)
	}
}
