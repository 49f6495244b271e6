// Package quota holds what wanpin's data quotas need besides the
// decisions (pkg/core): sizes as the policy file writes them
// ("20GB", "1.5 TiB"), the period a moment falls in (monthly from a
// reset day, or daily, in the daemon's local time zone), and the file
// that keeps the counts across restarts and reboots (store.go).
package quota

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/wanpin/wanpin/pkg/units"
)

// Units a size may carry: decimal (1000) and binary (1024) multiples.
// "KB" and the like are refused: they mean 1000 to some and 1024 to
// others.
var sizes = units.Kind{What: "size", Example: "20GB", Names: UnitNames, Units: []units.Unit{
	{Name: "B", Mult: 1},
	{Name: "kB", Mult: 1e3}, {Name: "MB", Mult: 1e6}, {Name: "GB", Mult: 1e9}, {Name: "TB", Mult: 1e12},
	{Name: "KiB", Mult: 1 << 10}, {Name: "MiB", Mult: 1 << 20}, {Name: "GiB", Mult: 1 << 30}, {Name: "TiB", Mult: 1 << 40},
}}

// UnitNames lists the accepted units, for messages.
const UnitNames = "B, kB, MB, GB, TB, KiB, MiB, GiB, TiB"

// ParseSize reads a size: a number (decimals allowed: "1.5GB"), an
// optional space and a unit. The result must be a whole number of bytes,
// at least 1.
func ParseSize(s string) (uint64, error) {
	r, err := sizes.Parse(s)
	if err != nil {
		return 0, err
	}
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	n := r.Num()
	if !n.IsUint64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if n.Uint64() == 0 {
		return 0, fmt.Errorf("%q: a quota must be at least 1 byte", s)
	}
	return n.Uint64(), nil
}

// FormatSize writes a byte count for people, in decimal units ("10.5 MB"),
// exact below 1 kB.
func FormatSize(n uint64) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), 0
	names := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	for v >= 1000 && i < len(names)-1 {
		v /= 1000
		i++
	}
	return strings.TrimSuffix(strings.TrimRight(strconv.FormatFloat(v, 'f', 2, 64), "0"), ".") + " " + names[i]
}

// Period is how often a quota starts again.
type Period string

const (
	// Monthly: on the reset day of every month (clamped to the month's
	// length: day 31 is February's 28th or 29th), at midnight.
	Monthly Period = "monthly"
	// Daily: every midnight.
	Daily Period = "daily"
)

// Bounds returns the start of the period at falls in and the start of
// the next one, at midnight in at's location (the daemon passes local
// time: the ISP's billing day is a day on the admin's calendar). resetDay
// (1..31) counts for Monthly alone.
func Bounds(at time.Time, p Period, resetDay int) (start, next time.Time) {
	loc := at.Location()
	y, m, d := at.Date()
	if p == Daily {
		return time.Date(y, m, d, 0, 0, 0, 0, loc), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	}
	day := func(y int, m time.Month) time.Time {
		// time.Date normalises the month (13 is next January) first.
		first := time.Date(y, m, 1, 0, 0, 0, 0, loc)
		return time.Date(first.Year(), first.Month(), min(resetDay, daysIn(first.Year(), first.Month())), 0, 0, 0, 0, loc)
	}
	this := day(y, m)
	if at.Before(this) {
		return day(y, m-1), this
	}
	return this, day(y, m+1)
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
