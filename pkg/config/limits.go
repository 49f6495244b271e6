package config

// Limits of the policy file, all in one place. Each one is checked with an
// error that names it, so that no file can make `wanpin check`, `wanpin
// run` or a reload hang or run out of memory. Tests read these constants:
// change one here and its tests follow.
const (
	// MaxFileSize is the largest policy file read. The file must be able to
	// hold what the other limits allow: 200,000 destinations in the longest
	// IPv6 form take 9.6 MB, and a policy's header, name and keys some 100
	// bytes more each. Reading, copying and decoding text costs a few bytes
	// of memory per byte of it.
	MaxFileSize = 16 << 20
)
