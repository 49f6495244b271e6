package rules

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// ownerPersistSupported: NFT_TABLE_F_PERSIST exists from Linux 6.9. Before
// that an owner table dies with its socket, so a crashed or restarted
// daemon would leave the router without its marks for a while; without the
// owner flag the table simply stays, which is the better failure.
func ownerPersistSupported(release string) bool {
	major, minor, ok := parseRelease(release)
	return ok && (major > 6 || major == 6 && minor >= 9)
}

// ownerSupported: NFT_TABLE_F_OWNER exists from Linux 5.12.
func ownerSupported(release string) bool {
	major, minor, ok := parseRelease(release)
	return ok && (major > 5 || major == 5 && minor >= 12)
}

// parseRelease reads "6.18.44-fc-v509" as 6, 18.
func parseRelease(r string) (major, minor int, ok bool) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, err2 := strconv.Atoi(minorStr)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return major, minor, true
}
