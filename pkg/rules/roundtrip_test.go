package rules

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wanpin/wanpin/pkg/desired"
)

// TestListedTableReloads: what `nft list table` prints of wanpin's
// tables is what an admin saves with `nft list ruleset >
// /etc/nftables.conf`, and nft -f type-checks that text as it parses it:
// one rule it refuses and the whole file, the admin's own firewall
// included, is not loaded at the next boot. So for every golden spec the
// listing, loaded back with nft -f after the table is deleted, must load
// and list the same again.
//
// Left out: cgroup conditions (services). nft lists a cgroup id it finds
// no path for as its number and takes only a path in a ruleset, so a
// listing with a service that is not running does not load whatever
// wanpin renders (see layout.md); the golden specs' ids are made up.
func TestListedTableReloads(t *testing.T) {
	specs := goldenSpecs()
	// A balancer of the most buckets Validate allows: its map's keys
	// past one byte, on one line.
	big := specs["two_up"]
	big.Default = desired.Both(desired.Choice{Buckets: []desired.Bucket{{Mark: 0x100, Weight: 599}, {Mark: 0x200, Weight: 400}}})
	specs["big_balancer"] = big
	for name, s := range specs {
		s.Policies = slices.Clone(s.Policies)
		for i := range s.Policies {
			s.Policies[i].Match.Cgroups = nil
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			// Without the owner flag, as on Debian 12's kernel (no
			// persist): the table anyone may delete, beside its owned
			// companion.
			ns := newNS(t)
			m := ns.manager(t, WithoutOwner())
			mustApply(t, m, s)
			listed := ns.mustNft(t, "list", "table", "inet", s.Table)
			if d := cmp.Diff(Render(s), listed); d != "" {
				t.Errorf("nft list differs from Render (-render +kernel):\n%s", d)
			}
			f := filepath.Join(dir, s.Table+".nft")
			if err := os.WriteFile(f, []byte(listed), 0o644); err != nil {
				t.Fatal(err)
			}
			ns.mustNft(t, "delete", "table", "inet", s.Table)
			if out, err := ns.nft("-f", f); err != nil {
				t.Fatalf("nft -f of the listed table: %v\n%s", err, out)
			}
			if d := cmp.Diff(listed, ns.mustNft(t, "list", "table", "inet", s.Table)); d != "" {
				t.Errorf("the reloaded table lists differently (-listed +reloaded):\n%s", d)
			}

			// The companion is owned by the Manager's socket (nobody else
			// may delete it): its listing goes into a fresh namespace,
			// without the owner's flags and comment, which would make it
			// nft's own and gone when nft exits.
			keep := normalizeListing(ns.mustNft(t, "list", "table", "inet", KeepTable(s.Table)))
			kf := filepath.Join(dir, KeepTable(s.Table)+".nft")
			if err := os.WriteFile(kf, []byte(keep), 0o644); err != nil {
				t.Fatal(err)
			}
			ns2 := newNS(t)
			if out, err := ns2.nft("-f", kf); err != nil {
				t.Fatalf("nft -f of the listed companion: %v\n%s", err, out)
			}
			if d := cmp.Diff(keep, ns2.mustNft(t, "list", "table", "inet", KeepTable(s.Table))); d != "" {
				t.Errorf("the reloaded companion lists differently (-listed +reloaded):\n%s", d)
			}
		})
	}
}
