package adaptive

import (
	"fmt"
	"math/big"
	"strings"
)

// UnitNames lists the units a bandwidth takes, for messages.
const UnitNames = "bit, kbit, Mbit, Gbit (bits per second, powers of 1000)"

// Limits of a configured bandwidth, in bit/s.
const (
	MinBandwidth = 1e3
	MaxBandwidth = 1e12
)

var bandwidthUnits = []struct {
	name string
	mult int64
}{{"bit", 1}, {"kbit", 1e3}, {"Mbit", 1e6}, {"Gbit", 1e9}}

// ParseBandwidth reads a rate such as "100Mbit" or "2.5Gbit" (decimal:
// k is 1000, as ISPs and tc count) into bit/s. A bare number and any
// other unit are refused: "100MB" would be bytes, "100M" is ambiguous.
func ParseBandwidth(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a bandwidth: want a number and a unit (%s), e.g. \"100Mbit\"", s, UnitNames)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	unit = strings.TrimSuffix(unit, "/s")
	var mult int64
	for _, u := range bandwidthUnits {
		if u.name == unit {
			mult = u.mult
		}
	}
	if mult == 0 {
		if unit == "" {
			return 0, fmt.Errorf("%q has no unit: want one of %s", s, UnitNames)
		}
		return 0, fmt.Errorf("%q: unit %q is not one of %s", s, unit, UnitNames)
	}
	if strings.Count(num, ".") > 1 || strings.HasPrefix(num, ".") || strings.HasSuffix(num, ".") {
		return 0, fmt.Errorf("%q: %q is not a number", s, num)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q: %q is not a number", s, num)
	}
	r.Mul(r, big.NewRat(mult, 1))
	lo, hi := big.NewRat(MinBandwidth, 1), big.NewRat(MaxBandwidth, 1)
	if r.Cmp(lo) < 0 || r.Cmp(hi) > 0 {
		return 0, fmt.Errorf("%q: a bandwidth must be 1kbit..1000Gbit", s)
	}
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bit/s", s)
	}
	return r.Num().Uint64(), nil
}
