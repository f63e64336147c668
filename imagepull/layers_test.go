package imagepull

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
)

// manyLayers is n layers from first: each writes its own file and the
// file every layer writes.
func manyLayers(t *testing.T, tag string, first, n int) []v1.Layer {
	t.Helper()
	layers := make([]v1.Layer, n)
	for i := range n {
		layers[i] = imagetest.Layer(t,
			imagetest.Entry{Name: fmt.Sprintf("layers/%d", first+i), Body: fmt.Sprintf("layer %d of %s\n", first+i, tag)},
			imagetest.Entry{Name: "every", Body: fmt.Sprintf("%s layer %d\n", tag, first+i)})
	}
	return layers
}

func checkManyLayers(t *testing.T, rootfs, tag string, first, n int) {
	t.Helper()
	if got, want := readFile(t, filepath.Join(rootfs, "every")), fmt.Sprintf("%s layer %d\n", tag, first+n-1); got != want {
		t.Errorf("every = %q, want the last layer's %q", got, want)
	}
	ents, err := os.ReadDir(filepath.Join(rootfs, "layers"))
	if err != nil || len(ents) != n {
		t.Fatalf("%d files under layers/ (%v), want one per layer, %d", len(ents), err, n)
	}
	for _, i := range []int{first, first + n/2, first + n - 1} {
		if got := readFile(t, filepath.Join(rootfs, "layers", fmt.Sprint(i))); !strings.HasPrefix(got, fmt.Sprintf("layer %d of", i)) {
			t.Errorf("layers/%d = %q", i, got)
		}
	}
}

// Any layer count up to overlayfs' own limit mounts, whatever the
// work_dir's length: the mount options stay within one page.
func TestManyLayers(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	for _, c := range []struct {
		n       int
		workDir int // length of the work_dir path, 0 for a temp dir's
	}{{60, 0}, {128, 0}, {128, 200}, {500, 0}} {
		// The name's comma lands in the bundle's path: overlay options
		// no longer carry it, so it is no longer refused.
		t.Run(fmt.Sprintf("%d layers, work_dir %d", c.n, c.workDir), func(t *testing.T) {
			tag := fmt.Sprintf("img%d", c.n)
			reg.Push(t, tag+":v1", imagetest.Image(t, manyLayers(t, tag, 0, c.n)...))
			cfg := forRegistry(t, reg)
			if c.workDir > 0 {
				cfg.WorkDir = longDir(t, c.workDir)
			}
			p := puller(t, cfg, newFakeKBS(nil))
			b := bundle(t)
			if _, err := p.Pull(t.Context(), reg.Host+"/"+tag+":v1", b); err != nil {
				t.Fatal(err)
			}
			if !p.overlay {
				t.Fatal("overlay not used: this test runs as root where overlayfs works")
			}
			checkManyLayers(t, filepath.Join(b, "rootfs"), tag, 0, c.n)
		})
	}
}

// longDir is a directory whose path is n bytes long.
func longDir(t *testing.T, n int) string {
	t.Helper()
	d := t.TempDir()
	name := strings.Repeat("w", n-len(d)-1)
	if len(name) < 1 || len(name) > 255 {
		t.Fatalf("cannot make a %d-byte path under %s", n, d)
	}
	d = filepath.Join(d, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if len(d) != n {
		t.Fatalf("path %d bytes, want %d", len(d), n)
	}
	return d
}

// Two images sharing 100 layers: the second pull fetches only its own,
// the store holds each layer once, and both rootfs are whole.
func TestManyLayersSharedAcrossImages(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	shared := manyLayers(t, "shared", 0, 100)
	a := append(append([]v1.Layer{}, shared...), manyLayers(t, "a", 100, 20)...)
	b := append(append([]v1.Layer{}, shared...), manyLayers(t, "b", 100, 30)...)
	reg.Push(t, "a:v1", imagetest.Image(t, a...))
	reg.Push(t, "b:v1", imagetest.Image(t, b...))
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	ba, bb := bundle(t), bundle(t)
	if _, err := p.Pull(t.Context(), reg.Host+"/a:v1", ba); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Pull(t.Context(), reg.Host+"/b:v1", bb); err != nil {
		t.Fatal(err)
	}
	checkManyLayers(t, filepath.Join(ba, "rootfs"), "a", 0, 120)
	checkManyLayers(t, filepath.Join(bb, "rootfs"), "b", 0, 130)
	for _, l := range shared {
		d, _ := l.Digest()
		if n := reg.BlobGets(d); n != 1 {
			t.Fatalf("shared layer %s downloaded %d times, want once", d, n)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "layers"))
	if len(ents) != 150 {
		t.Errorf("work_dir/layers holds %d entries, want the 150 distinct layers", len(ents))
	}
}

// Past overlayfs' limit the error names it, and nothing is mounted.
func TestTooManyLayers(t *testing.T) {
	dirs := make([]string, maxLowerLayers+1)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	p := &Puller{mount: func(string, string, string, uintptr, string) error { t.Fatal("mounted"); return nil }}
	b := t.TempDir()
	err := p.mountOverlay(dirs, b, filepath.Join(b, "rootfs"))
	if codeOf(err) != CodeUnsupported || !strings.Contains(err.Error(), "at most 500") {
		t.Fatalf("%v", err)
	}
}

// A failed mount leaves no link entries (nor upper/work) in the bundle.
func TestFailedMountLeavesNoLinks(t *testing.T) {
	p := &Puller{mount: func(string, string, string, uintptr, string) error { return os.ErrPermission }}
	b := t.TempDir()
	if err := p.mountOverlay([]string{t.TempDir(), t.TempDir()}, b, filepath.Join(b, "rootfs")); err == nil {
		t.Fatal("mount failure not reported")
	}
	mustNotExist(t, filepath.Join(b, "overlay"))
}

// The mount's working directory is its own thread's: the process's is
// untouched, and the options hold only short relative names.
func TestMountOptionsAreShortAndRelative(t *testing.T) {
	wd, _ := os.Getwd()
	var data, cwd string
	p := &Puller{mount: func(_, _, _ string, _ uintptr, d string) error {
		data = d
		cwd, _ = os.Getwd() // Getwd reads this thread's working directory
		return nil
	}}
	b := t.TempDir()
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	if err := p.mountOverlay(dirs, b, filepath.Join(b, "rootfs")); err != nil {
		t.Fatal(err)
	}
	if data != "lowerdir=2:1:0,upperdir=../upper,workdir=../work" {
		t.Errorf("options %q", data)
	}
	if cwd != filepath.Join(b, "overlay", "l") {
		t.Errorf("mounted from %q, want the bundle's link directory", cwd)
	}
	if now, _ := os.Getwd(); now != wd {
		t.Errorf("the process's working directory moved to %q", now)
	}
	for i, d := range dirs {
		if l, err := os.Readlink(filepath.Join(b, "overlay", "l", fmt.Sprint(i))); err != nil || l != d {
			t.Errorf("link %d → %q (%v), want %q", i, l, err, d)
		}
	}
}
