package guestvm

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

type cpioEntry struct {
	mode       uint64
	rmaj, rmin uint64
	data       string
}

// readNewc parses a newc archive as the kernel does, failing on any
// misalignment, and returns its entries by name (the trailer included).
func readNewc(t *testing.T, b []byte) (map[string]cpioEntry, []string) {
	t.Helper()
	entries := map[string]cpioEntry{}
	var order []string
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return v
		}
		mode, size, rmaj, rmin, nameLen := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nameLen)-1])
		if b[off+110+int(nameLen)-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		off += 110 + int(nameLen)
		align()
		data := string(b[off : off+int(size)])
		off += int(size)
		align()
		if _, dup := entries[name]; dup {
			t.Fatalf("%s twice", name)
		}
		entries[name] = cpioEntry{mode: mode, rmaj: rmaj, rmin: rmin, data: data}
		order = append(order, name)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return entries, order
		}
	}
}

func TestArchive(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "tool")
	if err := os.WriteFile(host, []byte("#!/bin/sh\necho odd-length\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	a := newArchive(&buf)
	a.charDev("dev/console", 0o600, 5, 1)
	a.copyFile("/usr/local/bin/tool", host)
	a.file("etc/x.json", 0o644, []byte("{}"))
	a.symlink("bin/sh", "/bin/busybox")
	a.mkdirAll("usr/local") // already there: not repeated
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	got, order := readNewc(t, buf.Bytes())
	want := map[string]cpioEntry{
		"dev":                {mode: 0o040755},
		"dev/console":        {mode: 0o020600, rmaj: 5, rmin: 1},
		"usr":                {mode: 0o040755},
		"usr/local":          {mode: 0o040755},
		"usr/local/bin":      {mode: 0o040755},
		"usr/local/bin/tool": {mode: 0o100755, data: "#!/bin/sh\necho odd-length\n"},
		"etc":                {mode: 0o040755},
		"etc/x.json":         {mode: 0o100644, data: "{}"},
		"bin":                {mode: 0o040755},
		"bin/sh":             {mode: 0o120777, data: "/bin/busybox"},
		"TRAILER!!!":         {},
	}
	if len(got) != len(want) {
		t.Fatalf("entries %q, want %d", order, len(want))
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s: %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	// Parents come before their children, as the kernel needs.
	seen := map[string]bool{}
	for _, n := range order {
		if d := filepath.Dir(n); d != "." && !seen[d] && n != "TRAILER!!!" {
			t.Errorf("%s before its directory", n)
		}
		seen[n] = true
	}
}

func TestArchiveRefusesNonRegularFiles(t *testing.T) {
	a := newArchive(&bytes.Buffer{})
	a.copyFile("x", t.TempDir())
	if err := a.close(); err == nil {
		t.Fatal("a directory was archived as a file")
	}
}
