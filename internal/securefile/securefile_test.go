package securefile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "secret")
	for _, v := range []string{"first", "second, longer value"} {
		if err := Write(p, []byte(v)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != v {
			t.Fatalf("%q %v, want %q", b, err, v)
		}
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v, want 0600", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(p)); di.Mode().Perm() != 0o700 {
		t.Fatalf("new directory mode %v, want 0700", di.Mode())
	}
	left, _ := os.ReadDir(filepath.Dir(p))
	if len(left) != 1 {
		t.Fatalf("temporary files left behind: %v", left)
	}
	// A directory in the way fails cleanly and leaves no temporary file.
	if err := os.Mkdir(filepath.Join(dir, "isdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "isdir"), []byte("x")); err == nil {
		t.Fatal("writing over a directory succeeded")
	}
	if left, _ := os.ReadDir(dir); len(left) != 2 {
		t.Fatalf("entries after a failed write: %v", left)
	}
}
