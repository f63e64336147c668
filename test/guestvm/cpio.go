package guestvm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// archive is an initramfs part in the kernel's "newc" cpio format. The
// kernel unpacks several such parts concatenated in one initrd, later ones
// over earlier ones, which is how the cached base, the project's binaries
// and one run's files become one initrd without rebuilding the base.
type archive struct {
	w    *bufio.Writer
	off  int64
	ino  uint32
	dirs map[string]bool
	err  error
}

func newArchive(w io.Writer) *archive {
	return &archive{w: bufio.NewWriterSize(w, 1<<20), ino: 1, dirs: map[string]bool{"": true, ".": true}}
}

func (a *archive) header(name string, mode uint32, size int64) {
	a.headerDev(name, mode, size, 0, 0)
}

func (a *archive) headerDev(name string, mode uint32, size int64, rmajor, rminor uint32) {
	if a.err != nil {
		return
	}
	a.ino++
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		name = "."
	}
	// 13 fields of 8 hex digits after the magic; uid/gid 0, mtime 0 so
	// the same inputs give the same bytes.
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		a.ino, mode, 0, 0, 1, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	a.write([]byte(h))
	a.write([]byte(name + "\x00"))
	a.pad()
}

func (a *archive) write(b []byte) {
	if a.err != nil {
		return
	}
	n, err := a.w.Write(b)
	a.off += int64(n)
	a.err = err
}

func (a *archive) pad() {
	if r := a.off % 4; r != 0 {
		a.write(make([]byte, 4-r))
	}
}

// mkdirAll adds name and its parents (mode 0755) unless already added.
func (a *archive) mkdirAll(name string) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if a.dirs[name] {
		return
	}
	a.mkdirAll(path.Dir(name))
	a.dirs[name] = true
	a.header(name, 0o040755, 0)
}

// file adds a regular file with the given contents.
func (a *archive) file(name string, mode os.FileMode, data []byte) {
	a.mkdirAll(path.Dir(name))
	a.header(name, 0o100000|uint32(mode.Perm()), int64(len(data)))
	a.write(data)
	a.pad()
}

// copyFile adds the host file src at name, keeping its permission bits.
func (a *archive) copyFile(name, src string) {
	if a.err != nil {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		a.err = err
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		a.err = err
		return
	}
	if !fi.Mode().IsRegular() {
		a.err = fmt.Errorf("%s: not a regular file", src)
		return
	}
	a.mkdirAll(path.Dir(name))
	a.header(name, 0o100000|uint32(fi.Mode().Perm()), fi.Size())
	if a.err != nil {
		return
	}
	n, err := io.Copy(a.w, f)
	a.off += n
	if err == nil && n != fi.Size() {
		err = fmt.Errorf("%s changed while being archived", src)
	}
	a.err = err
	a.pad()
}

// copyTree adds every regular file and directory under the host
// directory src at name, in a stable order.
func (a *archive) copyTree(name, src string) {
	entries, err := os.ReadDir(src)
	if err != nil {
		a.err = err
		return
	}
	a.mkdirAll(name)
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		s, n := src+"/"+e.Name(), path.Join(name, e.Name())
		switch {
		case e.IsDir():
			a.copyTree(n, s)
		case e.Type().IsRegular():
			a.copyFile(n, s)
		case e.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(s)
			if err != nil {
				a.err = err
				return
			}
			a.symlink(n, target)
		}
	}
}

// charDev adds a character device node.
func (a *archive) charDev(name string, perm, major, minor uint32) {
	a.mkdirAll(path.Dir(name))
	a.headerDev(name, 0o020000|perm, 0, major, minor)
}

// symlink adds name → target.
func (a *archive) symlink(name, target string) {
	a.mkdirAll(path.Dir(name))
	a.header(name, 0o120777, int64(len(target)))
	a.write([]byte(target))
	a.pad()
}

// close writes the trailer and flushes.
func (a *archive) close() error {
	a.header("TRAILER!!!", 0, 0)
	if a.err != nil {
		return a.err
	}
	return a.w.Flush()
}
