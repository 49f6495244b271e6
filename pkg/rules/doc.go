// Package rules turns a desired.NFT (what wanpin wants nftables to do)
// into one nftables table of wanpin's own, applied in a single atomic
// transaction, and renders the same table as the text `nft list table`
// prints.
//
// The spec says what, never how; the chain layout is this package's
// business and is documented in layout.md next to this file. Policy match
// keys are compiled by pkg/policy into conditions; this package turns
// each condition into expressions without knowing any key.
package rules
