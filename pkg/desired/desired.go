// Package desired holds the types of what wanpin wants the kernel to hold:
// its nftables table ([NFT]) and its routing tables and rules
// ([Routing]). They are plain values, built by pkg/core's pure functions
// and made real by pkg/rules and pkg/tables; nothing here touches the
// kernel.
package desired

// State is the whole desired kernel state.
type State struct {
	NFT     NFT
	Routing Routing
	MPTCP   MPTCP
}
