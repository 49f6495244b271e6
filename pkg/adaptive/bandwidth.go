package adaptive

import (
	"fmt"
	"math/big"

	"github.com/wanpin/wanpin/pkg/units"
)

// UnitNames lists the units a bandwidth takes, for messages.
const UnitNames = "bit, kbit, Mbit, Gbit (bits per second, powers of 1000)"

// Limits of a configured bandwidth, in bit/s.
const (
	MinBandwidth = 1e3
	MaxBandwidth = 1e12
)

// "/s" is allowed after the unit ("100Mbit/s").
var bandwidths = units.Kind{What: "bandwidth", Example: "100Mbit", Names: UnitNames, Units: []units.Unit{
	{Name: "bit", Mult: 1}, {Name: "kbit", Mult: 1e3}, {Name: "Mbit", Mult: 1e6}, {Name: "Gbit", Mult: 1e9},
	{Name: "bit/s", Mult: 1}, {Name: "kbit/s", Mult: 1e3}, {Name: "Mbit/s", Mult: 1e6}, {Name: "Gbit/s", Mult: 1e9},
}}

// ParseBandwidth reads a rate such as "100Mbit" or "2.5Gbit" (decimal:
// k is 1000, as ISPs and tc count) into bit/s. A bare number and any
// other unit are refused: "100MB" would be bytes, "100M" is ambiguous.
func ParseBandwidth(s string) (uint64, error) {
	r, err := bandwidths.Parse(s)
	if err != nil {
		return 0, err
	}
	lo, hi := big.NewRat(MinBandwidth, 1), big.NewRat(MaxBandwidth, 1)
	if r.Cmp(lo) < 0 || r.Cmp(hi) > 0 {
		return 0, fmt.Errorf("%q: a bandwidth must be 1kbit..1000Gbit", s)
	}
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bit/s", s)
	}
	return r.Num().Uint64(), nil
}
