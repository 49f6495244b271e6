// Package ifname says which interface names wanpin accepts: one rule for
// the policy file, the nftables table and the D-Bus interface.
package ifname

import "fmt"

// Size is IFNAMSIZ: names are at most 15 bytes plus the NUL.
const Size = 16

// Check accepts what the kernel's dev_valid_name accepts (1 to 15 bytes,
// no '/', ':' or whitespace, not "." or "..") that nft can also print
// between double quotes without escaping (no '"', no control bytes, plain
// ASCII). The interface may not exist yet: that is all that can be
// checked.
func Check(s string) error {
	bad := s == "" || len(s) >= Size || s == "." || s == ".."
	for i := 0; i < len(s) && !bad; i++ {
		c := s[i]
		bad = c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '"'
	}
	if bad {
		return fmt.Errorf(`interface %q is not a Linux interface name (1 to 15 printable ASCII bytes, no '/', ':', '"' or whitespace, not "." or "..")`, s)
	}
	return nil
}
