// Package units reads the policy file's numbers with a unit ("20GB",
// "100Mbit"): one grammar for every such key, each with its own units.
package units

import (
	"fmt"
	"math/big"
	"strings"
)

// Unit is a unit's name as written and what one of it is worth in the
// base unit (bytes, bit/s).
type Unit struct {
	Name string
	Mult uint64
}

// Kind describes a key's values for Parse and its messages.
type Kind struct {
	What    string // "size", "bandwidth"
	Example string // "20GB"
	Units   []Unit
	Names   string // the units as a message lists them
}

// Parse reads a number (decimals allowed: "1.5GB"), an optional space and
// one of k's units, exactly, as a count of base units. A bare number and
// any other unit are refused: a unit left out or mistyped would silently
// mean something else.
func (k Kind) Parse(s string) (*big.Rat, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	if i == 0 {
		return nil, fmt.Errorf("%q is not a %s: want a number and a unit (%s), e.g. %q", s, k.What, k.Names, k.Example)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	var mult uint64
	for _, u := range k.Units {
		if u.Name == unit {
			mult = u.Mult
		}
	}
	if mult == 0 {
		if unit == "" {
			return nil, fmt.Errorf("%q has no unit: want one of %s", s, k.Names)
		}
		return nil, fmt.Errorf("%q: unit %q is not one of %s", s, unit, k.Names)
	}
	if strings.Count(num, ".") > 1 || strings.HasPrefix(num, ".") || strings.HasSuffix(num, ".") {
		return nil, fmt.Errorf("%q: %q is not a number", s, num)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return nil, fmt.Errorf("%q: %q is not a number", s, num)
	}
	return r.Mul(r, new(big.Rat).SetInt(new(big.Int).SetUint64(mult))), nil
}
