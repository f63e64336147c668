package kbs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestLocalFsFollowsLinksIntoCSIVolume(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt", "akv")
	if err := WriteCSI(mnt, map[string][]byte{"coco_one": []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	l := LocalFsStore{Dir: filepath.Join(dir, "kbs")}
	if err := l.LinkObjects("default", "akv", mnt, "coco_one", "later"); err != nil {
		t.Fatal(err)
	}
	flat := filepath.Join(l.Dir, "repository", `default\x2Fakv\x2Fcoco_one`)
	if target, err := os.Readlink(flat); err != nil || target != filepath.Join(mnt, "coco_one") {
		t.Fatalf("flat name %q -> %q %v", flat, target, err)
	}
	if b, err := l.Read("default", "akv", "coco_one"); err != nil || string(b) != "v1" {
		t.Fatalf("read through link: %q %v", b, err)
	}
	// An object linked before the volume has it reads as missing, as in
	// Trustee (a dangling link does not exist), until the volume gets it.
	if _, err := l.Read("default", "akv", "later"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dangling link: %v", err)
	}
	if err := WriteCSI(mnt, map[string][]byte{"coco_one": []byte("v2"), "later": []byte("new")}); err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]string{"coco_one": "v2", "later": "new"} {
		if b, err := l.Read("default", "akv", tag); err != nil || string(b) != want {
			t.Fatalf("after rotation %s: %q %v", tag, b, err)
		}
	}
	// Linking again changes nothing (no window where the name is missing).
	fi1, _ := os.Lstat(flat)
	if err := l.LinkObjects("default", "akv", mnt, "coco_one"); err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Lstat(flat); !os.SameFile(fi1, fi2) {
		t.Fatal("an existing correct link was replaced")
	}
	if err := l.LinkObjects("default", "akv", mnt, "../x"); err == nil {
		t.Fatal("object name with a slash accepted")
	}
}
