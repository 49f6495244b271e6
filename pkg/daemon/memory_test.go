package daemon

import (
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/wanpin/wanpin/pkg/rules"
)

// fakeMemory is an NFTables with a memory (only Memory and Seed work).
type fakeMemory struct {
	NFTables
	mem    rules.Memory
	seeded []rules.Memory
}

func (f *fakeMemory) Memory() (rules.Memory, error) { return f.mem, nil }
func (f *fakeMemory) Seed(m rules.Memory)           { f.seeded = append(f.seeded, m) }

// TestMemoryFile: a stop writes the memory down (root only), the next
// start hands it to the table once and removes the file; an unreadable
// file is dropped, and a stop with nothing to keep leaves no file.
func TestMemoryFile(t *testing.T) {
	f := &fakeMemory{mem: rules.Memory{Taken: time.Now(), Sets: map[string]rules.MemorySet{
		"st4_default_m1": {KeyType: "ipv4_addr", KeyBytes: 4, Elems: []rules.MemoryElem{{Key: []byte{192, 0, 2, 10}, Left: time.Minute}}},
		"p_tv_dom4":      {KeyType: "ipv4_addr", KeyBytes: 4, Elems: []rules.MemoryElem{{Key: []byte{203, 0, 113, 7}, Left: time.Hour, Comment: "www.example.com"}}},
	}}}
	d := &Daemon{opts: Options{RuntimeDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), nft: f}
	path := d.memoryPath()

	d.saveMemory()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("after a stop: %v, %v; want a file of mode 0600", st, err)
	}
	d.loadMemory()
	if len(f.seeded) != 1 || f.seeded[0].Len() != 2 || f.seeded[0].Sets["p_tv_dom4"].Elems[0].Comment != "www.example.com" {
		t.Fatalf("seeded %+v, want the two entries once", f.seeded)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the file outlived its reading: %v", err)
	}
	d.loadMemory()
	if len(f.seeded) != 1 {
		t.Errorf("a memory used twice")
	}

	if err := os.WriteFile(path, []byte(`{"taken": "yesterday`), 0o600); err != nil {
		t.Fatal(err)
	}
	d.loadMemory()
	if _, err := os.Stat(path); len(f.seeded) != 1 || !os.IsNotExist(err) {
		t.Errorf("a broken file: seeded %d times, file %v; want it dropped", len(f.seeded), err)
	}

	d.saveMemory()
	f.mem = rules.Memory{}
	d.saveMemory()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a stop with nothing to keep left the last file: %v", err)
	}
}
