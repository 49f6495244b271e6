package ifname

import "testing"

func TestCheck(t *testing.T) {
	for _, ok := range []string{"eth0", "ppp0", "wan-1", "br.100", "enp1s0f0np0", "a", "wwan0_1", "abcdefghijklmno"} {
		if err := Check(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a:b", "a b", "a\tb", `a"b`, "abcdefghijklmnop", "é", "a\x00"} {
		if Check(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
