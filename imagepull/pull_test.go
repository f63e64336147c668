package imagepull

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
)

// fakeKBS is the resource service: URIs to bytes.
type fakeKBS struct {
	mu    sync.Mutex
	res   map[string][]byte
	calls map[string]int
}

var errNoResource = errors.New("resource not found at the KBS")

func newFakeKBS(res map[string][]byte) *fakeKBS {
	return &fakeKBS{res: res, calls: map[string]int{}}
}

func (f *fakeKBS) Fetch(_ context.Context, uri string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[uri]++
	b, ok := f.res[uri]
	if !ok {
		return nil, fmt.Errorf("%s: %w", uri, errNoResource)
	}
	return append([]byte(nil), b...), nil
}

type pullStats struct {
	mu      sync.Mutex
	results []string
	bytes   int64
}

func (s *pullStats) ObserveImagePull(result string, bytes int64, _ time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results = append(s.results, result)
	s.bytes += bytes
}

func testConfig(t *testing.T) Config {
	return Config{WorkDir: t.TempDir(), MaxConcurrentLayerDownloads: 3}
}

// codeOf is err's Code; CodeInternal for an untyped error.
func codeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// forRegistry is testConfig letting reg's plain HTTP in.
func forRegistry(t *testing.T, reg *imagetest.Registry) Config {
	cfg := testConfig(t)
	cfg.Registries = insecure(reg.Host)
	return cfg
}

// puller is a Puller that is closed when the test ends.
func puller(t *testing.T, cfg Config, kbs Fetcher) *Puller {
	p := New(cfg, kbs, Options{})
	t.Cleanup(p.Close)
	return p
}

// insecure lets the plain-HTTP test registry in, as registries.conf does.
func insecure(host string) []byte {
	return fmt.Appendf(nil, "[[registry]]\nlocation = %q\ninsecure = true\n", host)
}

// bundle makes the empty bundle directory kata-agent creates and unmounts
// whatever the test mounted there at the end.
func bundle(t *testing.T) string {
	dir := t.TempDir()
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir, "rootfs"), unix.MNT_DETACH) })
	return dir
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (err %v), want it gone", path, err)
	}
}

// layeredImage exercises what layer application must get right.
func layeredImage(t *testing.T) v1.Image {
	base := imagetest.Layer(t,
		imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
		imagetest.Entry{Name: "etc/os-release", Body: "base\n"},
		imagetest.Entry{Name: "etc/removed", Body: "gone in layer 2\n"},
		imagetest.Entry{Name: "opaque/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opaque/old", Body: "hidden by the opaque dir\n"},
		imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
		imagetest.Entry{Name: "bin/tool", Body: "#!/bin/sh\n", Mode: 0o4755, UID: 1000, GID: 1001},
		imagetest.Entry{Name: "data", Body: "with xattr", Xattrs: map[string]string{"user.cdh": "yes"}},
	)
	top := imagetest.Layer(t,
		imagetest.Entry{Name: "etc/os-release", Body: "top\n"},
		imagetest.Entry{Name: "etc/.wh.removed", Body: ""},
		imagetest.Entry{Name: "opaque/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opaque/.wh..wh..opq", Body: ""},
		imagetest.Entry{Name: "opaque/new", Body: "new\n"},
		imagetest.Entry{Name: "bin/tool2", Body: "two\n"},
		imagetest.Entry{Name: "bin/hard", Type: tar.TypeLink, Link: "bin/tool2"},
		imagetest.Entry{Name: "bin/sym", Type: tar.TypeSymlink, Link: "tool"},
	)
	return imagetest.Image(t, base, top)
}

func checkLayeredRootfs(t *testing.T, rootfs string) {
	t.Helper()
	if got := readFile(t, filepath.Join(rootfs, "etc/os-release")); got != "top\n" {
		t.Errorf("etc/os-release = %q, want the top layer's", got)
	}
	mustNotExist(t, filepath.Join(rootfs, "etc/removed"))
	mustNotExist(t, filepath.Join(rootfs, "opaque/old"))
	if got := readFile(t, filepath.Join(rootfs, "opaque/new")); got != "new\n" {
		t.Errorf("opaque/new = %q", got)
	}
	if got := readFile(t, filepath.Join(rootfs, "bin/hard")); got != "two\n" {
		t.Errorf("hardlink content %q", got)
	}
	if l, err := os.Readlink(filepath.Join(rootfs, "bin/sym")); err != nil || l != "tool" {
		t.Errorf("symlink = %q, %v", l, err)
	}
	st, err := os.Stat(filepath.Join(rootfs, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode()&os.ModeSetuid == 0 || st.Mode().Perm() != 0o755 || sys.Uid != 1000 || sys.Gid != 1001 {
		t.Errorf("bin/tool mode %v owner %d:%d, want setuid 0755 1000:1001", st.Mode(), sys.Uid, sys.Gid)
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(rootfs, "data"), "user.cdh", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("xattr user.cdh = %q, %v", buf[:max(n, 0)], err)
	}
}

func TestPullOverlayLayersAndDedup(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	img := layeredImage(t)
	want := reg.Push(t, "app:v1", img)
	cfg := forRegistry(t, reg)
	stats := &pullStats{}
	p := New(cfg, newFakeKBS(nil), Options{Observer: stats})
	defer p.Close()

	b1 := bundle(t)
	got, err := p.Pull(t.Context(), reg.Host+"/app:v1", b1)
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("digest %s, want %s", got, want)
	}
	if !p.overlay {
		t.Fatal("overlay not used: this test runs as root where overlayfs works")
	}
	checkLayeredRootfs(t, filepath.Join(b1, "rootfs"))
	// The container writes into its own upper, not the shared layer.
	if err := os.WriteFile(filepath.Join(b1, "rootfs/etc/os-release"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}

	b2 := bundle(t)
	if _, err := p.Pull(t.Context(), reg.Host+"/app:v1", b2); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(b2, "rootfs/etc/os-release")); got != "top\n" {
		t.Errorf("second container sees %q: writes leaked between containers", got)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		if n := reg.BlobGets(d); n != 1 {
			t.Errorf("layer %s downloaded %d times, want once", d, n)
		}
	}
	if len(stats.results) != 2 || stats.results[0] != "ok" || stats.results[1] != "ok" {
		t.Errorf("results %v", stats.results)
	}
	size := int64(0)
	for _, l := range layers {
		s, _ := l.Size()
		size += s
	}
	if stats.bytes != size {
		t.Errorf("counted %d bytes, want %d (the layers once)", stats.bytes, size)
	}
	ents, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "layers"))
	if len(ents) != 2 {
		t.Errorf("work_dir/layers holds %d entries, want the 2 layers", len(ents))
	}
}

func TestPullFlatFallbackWithoutOverlay(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", layeredImage(t))
	cfg := forRegistry(t, reg)
	p := New(cfg, newFakeKBS(nil), Options{Mount: noOverlay})
	defer p.Close()
	b := bundle(t)
	if _, err := p.Pull(t.Context(), reg.Host+"/app:v1", b); err != nil {
		t.Fatal(err)
	}
	if p.overlay {
		t.Fatal("overlay reported usable")
	}
	checkLayeredRootfs(t, filepath.Join(b, "rootfs"))
	// Whiteouts were applied, not stored as whiteout files.
	mustNotExist(t, filepath.Join(b, "rootfs/etc/.wh.removed"))
}

func TestHostileLayersAreContained(t *testing.T) {
	for _, overlay := range []bool{true, false} {
		t.Run(fmt.Sprintf("overlay=%v", overlay), func(t *testing.T) {
			outside := t.TempDir()
			reg := imagetest.NewRegistry(t, false)
			reg.Push(t, "evil:1", imagetest.Image(t, imagetest.Layer(t,
				imagetest.Entry{Name: "../../../../../../.." + outside + "/dotdot", Body: "escaped"},
				imagetest.Entry{Name: outside + "/absolute", Body: "escaped"},
				imagetest.Entry{Name: "link", Type: tar.TypeSymlink, Link: outside},
				imagetest.Entry{Name: "link/through", Body: "escaped"},
				imagetest.Entry{Name: "dev/", Type: tar.TypeDir},
				imagetest.Entry{Name: "dev/lower", Body: "lower"},
				imagetest.Entry{Name: "dev/sda", Type: tar.TypeBlock, Major: 8, Minor: 0, Mode: 0o666},
				imagetest.Entry{Name: "mem", Type: tar.TypeChar, Major: 1, Minor: 1, Mode: 0o666},
			), imagetest.Layer(t,
				// overlayfs's own attribute, smuggled in: it would hide the
				// lower layer's dev/ contents if it were applied.
				imagetest.Entry{Name: "dev/", Type: tar.TypeDir, Xattrs: map[string]string{"trusted.overlay.opaque": "y"}},
				imagetest.Entry{Name: "dev/keep", Body: "upper"},
			)))
			reg.Push(t, "evil:hardlink", imagetest.Image(t, imagetest.Layer(t,
				imagetest.Entry{Name: "hl", Type: tar.TypeLink, Link: "../../../../../../.." + outside + "/victim"},
			)))
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("host file"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := forRegistry(t, reg)
			o := Options{}
			if !overlay {
				o.Mount = func(string, string, string, uintptr, string) error { return syscall.ENODEV }
			}
			p := New(cfg, newFakeKBS(nil), o)
			defer p.Close()

			b := bundle(t)
			if _, err := p.Pull(t.Context(), reg.Host+"/evil:1", b); err != nil {
				t.Fatalf("names that escape are contained, not refused: %v", err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("layer wrote outside its root: %v", ents)
			}
			rootfs := filepath.Join(b, "rootfs")
			for _, inside := range []string{outside + "/dotdot", outside + "/absolute", outside + "/through"} {
				if got := readFile(t, filepath.Join(rootfs, inside)); got != "escaped" {
					t.Errorf("%s inside the rootfs = %q", inside, got)
				}
			}
			mustNotExist(t, filepath.Join(rootfs, "dev/sda"))
			mustNotExist(t, filepath.Join(rootfs, "mem"))
			if got := readFile(t, filepath.Join(rootfs, "dev/lower")); got != "lower" {
				t.Errorf("a layer's trusted.overlay.opaque hid the layer below: dev/lower = %q", got)
			}

			// A hardlink to a file outside the layer is refused, and
			// nothing is mounted.
			b2 := bundle(t)
			if _, err := p.Pull(t.Context(), reg.Host+"/evil:hardlink", b2); err == nil {
				t.Fatal("hardlink out of the layer accepted")
			}
			if got := readFile(t, filepath.Join(outside, "victim")); got != "host file" {
				t.Errorf("victim changed: %q", got)
			}
			mustNotExist(t, filepath.Join(b2, "rootfs/hl"))
		})
	}
}

func TestCorruptBlobIsRefusedAndNotStored(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	layer := imagetest.Layer(t, imagetest.Entry{Name: "f", Body: strings.Repeat("x", 4096)})
	reg.Push(t, "app:v1", imagetest.Image(t, layer))
	d, _ := layer.Digest()
	reg.Corrupt(d)
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	b := bundle(t)
	_, err := p.Pull(t.Context(), reg.Host+"/app:v1", b)
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
	ents, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "layers"))
	if len(ents) != 0 {
		t.Errorf("a corrupt layer was kept: %v", ents)
	}
	mustNotExist(t, filepath.Join(b, "rootfs/f"))
}

func TestFullDiskIsResourceExhausted(t *testing.T) {
	work := t.TempDir()
	if err := unix.Mount("tmpfs", work, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount a small tmpfs (the tests run as root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(work, unix.MNT_DETACH) })
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "huge:1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "huge", Size: 64 << 20})))
	cfg := Config{WorkDir: work, MaxConcurrentLayerDownloads: 1, Registries: insecure(reg.Host)}
	p := puller(t, cfg, newFakeKBS(nil))
	_, err := p.Pull(t.Context(), reg.Host+"/huge:1", bundle(t))
	if codeOf(err) != CodeExhausted {
		t.Fatalf("err = %v (code %d), want CodeExhausted", err, codeOf(err))
	}
	ents, _ := os.ReadDir(filepath.Join(work, "layers"))
	if len(ents) != 0 {
		t.Errorf("partial layer left in work_dir: %v", ents)
	}
}

// An interrupted pull (kata's deadline, a cancelled call) stops the
// download, leaves no scratch layer and mounts nothing; the next pull of
// the image works.
func TestCancelledPullLeavesNothing(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	layer := imagetest.Layer(t, imagetest.Entry{Name: "big", Body: strings.Repeat("z", 1<<20)})
	reg.Push(t, "app:v1", imagetest.Image(t, layer))
	d, _ := layer.Digest()
	hung := reg.Stall(d)
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))

	ctx, cancel := context.WithCancel(t.Context())
	b := bundle(t)
	errc := make(chan error, 1)
	go func() {
		_, err := p.Pull(ctx, reg.Host+"/app:v1", b)
		errc <- err
	}()
	<-hung // the download is under way
	cancel()
	if err := <-errc; codeOf(err) != CodeDeadline {
		t.Fatalf("cancelled pull: %v, want CodeDeadline", err)
	}
	p.layers.close() // waits for the download goroutine to end
	ents, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "layers"))
	if len(ents) != 0 {
		t.Errorf("interrupted pull left %v in work_dir/layers", ents)
	}
	mustNotExist(t, filepath.Join(b, "rootfs/big"))

	p2 := puller(t, cfg, newFakeKBS(nil))
	if got := readFile(t, filepath.Join(pullOK(t, p2, reg.Host+"/app:v1"), "big")); len(got) != 1<<20 {
		t.Errorf("pull after the interrupted one: %d bytes", len(got))
	}
}

// A daemon killed mid-pull leaves scratch directories; the first pull of
// the next run removes them, and never uses them.
func TestLeftoversOfAKilledPullAreRemoved(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "x"})))
	cfg := forRegistry(t, reg)
	for _, d := range []string{"layers/.tmp-123", "conf/.tmp-456", "tmp/probe-789"} {
		if err := os.MkdirAll(filepath.Join(cfg.WorkDir, d, "half"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	p := puller(t, cfg, newFakeKBS(nil))
	pullOK(t, p, reg.Host+"/app:v1")
	for _, d := range []string{"layers/.tmp-123", "conf/.tmp-456", "tmp/probe-789"} {
		mustNotExist(t, filepath.Join(cfg.WorkDir, d))
	}
}

// By digest, as kata passes pinned images.
func TestPullByDigest(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	d := reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "pinned"})))
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	if got := readFile(t, filepath.Join(pullOK(t, p, reg.Host+"/app@"+d.String()), "f")); got != "pinned" {
		t.Errorf("f = %q", got)
	}
	_, err := p.Pull(t.Context(), reg.Host+"/app@sha256:"+strings.Repeat("0", 64), bundle(t))
	if codeOf(err) != CodeNotFound {
		t.Errorf("unknown digest: %v", err)
	}
}

func TestBadBundlePaths(t *testing.T) {
	p := New(testConfig(t), newFakeKBS(nil), Options{})
	defer p.Close()
	full := t.TempDir()
	os.MkdirAll(filepath.Join(full, "rootfs", "x"), 0o755)
	for _, b := range []string{"", "relative/path", "/a/../b", "/no/such/dir", full} {
		if _, err := p.Pull(t.Context(), "r.test/app:v1", b); codeOf(err) != CodeInvalid {
			t.Errorf("bundle %q: %v, want invalid", b, err)
		}
	}
}

// A registry that sends more than the manifest's size for a blob is not
// read past that size.
func TestBlobReadOnlyToItsSize(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	layer := imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "sized"})
	reg.Push(t, "app:v1", imagetest.Image(t, layer))
	d, _ := layer.Digest()
	reg.Pad(d)
	stats := &pullStats{}
	p := New(forRegistry(t, reg), newFakeKBS(nil), Options{Observer: stats})
	t.Cleanup(p.Close)
	if got := readFile(t, filepath.Join(pullOK(t, p, reg.Host+"/app:v1"), "f")); got != "sized" {
		t.Errorf("f = %q", got)
	}
	if size, _ := layer.Size(); stats.bytes != size {
		t.Errorf("read %d bytes of the blob, want its %d", stats.bytes, size)
	}
}

// Release undoes a pull: the overlay is unmounted and the bundle is as
// before it, the stored layers untouched; the flat rootfs is removed; a
// bundle never pulled into is no error.
func TestRelease(t *testing.T) {
	for _, overlay := range []bool{true, false} {
		t.Run(fmt.Sprintf("overlay=%v", overlay), func(t *testing.T) {
			reg := imagetest.NewRegistry(t, false)
			reg.Push(t, "app:v1", layeredImage(t))
			cfg := forRegistry(t, reg)
			p := New(cfg, newFakeKBS(nil), overlayOr(overlay))
			defer p.Close()
			b := bundle(t)
			if _, err := p.Pull(t.Context(), reg.Host+"/app:v1", b); err != nil {
				t.Fatal(err)
			}
			if err := p.Release(b); err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(b); len(ents) != 0 {
				t.Errorf("bundle after Release holds %v", ents)
			}
			if overlay {
				if ents, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "layers")); len(ents) == 0 {
					t.Error("Release removed the stored layers")
				}
			}
			if err := p.Release(b); err != nil {
				t.Errorf("a second Release: %v", err)
			}
		})
	}
}

// noOverlay mounts as a kernel without overlayfs does.
func noOverlay(source, target, fstype string, flags uintptr, data string) error {
	if fstype == "overlay" {
		return syscall.ENODEV
	}
	return unix.Mount(source, target, fstype, flags, data)
}

// overlayOr is the puller's options with overlayfs, or without it.
func overlayOr(overlay bool) Options {
	if overlay {
		return Options{}
	}
	return Options{Mount: noOverlay}
}
