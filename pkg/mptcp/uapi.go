package mptcp

// Generic netlink family "mptcp_pm", from the kernel's
// include/uapi/linux/mptcp_pm.h (written out here: x/sys/unix has none
// of it). The numbers are ABI and never change.
const (
	familyName    = "mptcp_pm"
	familyVersion = 1

	cmdAddAddr   = 1
	cmdDelAddr   = 2
	cmdGetAddr   = 3
	cmdSetLimits = 5
	cmdGetLimits = 6
	cmdSetFlags  = 7

	attrAddr        = 1 // nested address attributes
	attrRcvAddAddrs = 2 // u32: add_addr_accepted
	attrSubflows    = 3 // u32

	addrAttrFamily = 1 // u16
	addrAttrID     = 2 // u8
	addrAttrAddr4  = 3 // 4 bytes, network order
	addrAttrAddr6  = 4 // 16 bytes
	addrAttrPort   = 5 // u16, host order
	addrAttrFlags  = 6 // u32
	addrAttrIfIdx  = 7 // s32
)

// The largest endpoint ID (MPTCP_PM_MAX_ADDR_ID) and the largest value
// SET_LIMITS accepts for either limit (MPTCP_PM_ADDR_MAX: "limit greater
// than maximum (8)" beyond it, measured on 6.18).
const (
	maxID    = 255
	maxLimit = 8
)
