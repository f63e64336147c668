package imagepull

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// maxMountData is the kernel's limit on mount options (one page).
const maxMountData = 4096 - 1

// maxLowerLayers is overlayfs' own limit on lower layers (OVL_MAX_STACK).
const maxLowerLayers = 500

// probeOverlay mounts a one-layer overlay under work_dir/tmp and takes it
// down again.
func (p *Puller) probeOverlay() error {
	dir, err := os.MkdirTemp(filepath.Join(p.cfg.WorkDir, "tmp"), "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	// As the rootfs mount: relative options, so work_dir's path (which
	// may hold ',' or ':') never reaches them.
	if err := mountFrom(dir, func() error {
		return p.mount("overlay", filepath.Join(dir, "m"), "overlay", 0, "lowerdir=l,upperdir=u,workdir=w")
	}); err != nil {
		return err
	}
	return unix.Unmount(filepath.Join(dir, "m"), unix.MNT_DETACH)
}

// mountOverlay mounts the layers (bottom first) at rootfs with a writable
// upper and work directory inside the bundle, so that removing the bundle
// after kata unmounts the rootfs removes the container's writes too.
//
// The mount options must fit one page (4095 bytes) whatever the number of
// layers and the work_dir's length, on every kernel a guest runs: the
// bundle gets a directory of links named 0, 1, 2… to the stored layers,
// and the mount is made from a thread whose working directory is that
// one, with the lower layers, upper and work given relative to it
// ("2:1:0,upperdir=../upper,workdir=../work": ~4 bytes a layer, 500
// layers in 2.4 KiB). overlayfs resolves the links at mount time. The
// links live in the bundle, so the layer store stays shared and
// untouched, and removing the bundle removes them. (Kernels ≥ 6.8 also
// take layers one at a time through fsconfig's lowerdir+, but older guest
// kernels do not; one way for all keeps one code path tested.)
func (p *Puller) mountOverlay(dirs []string, bundle, rootfs string) error {
	if len(dirs) > maxLowerLayers {
		return &Error{Code: CodeUnsupported, Msg: fmt.Sprintf("%d layers: overlayfs stacks at most %d lower layers", len(dirs), maxLowerLayers)}
	}
	ovl := filepath.Join(bundle, "overlay")
	links := filepath.Join(ovl, "l")
	fail := func(what string, err error) error {
		os.RemoveAll(ovl)
		return classify(what, err)
	}
	// Links from an earlier attempt are not reused: only what this mount
	// names is resolved, now.
	if err := os.RemoveAll(links); err != nil {
		return fail("bundle "+bundle, err)
	}
	for _, d := range []string{rootfs, filepath.Join(ovl, "upper"), filepath.Join(ovl, "work"), links} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fail("bundle "+bundle, err)
		}
	}
	names := make([]string, len(dirs))
	for i, d := range dirs {
		names[i] = strconv.Itoa(i)
		if err := os.Symlink(d, filepath.Join(links, names[i])); err != nil {
			return fail("bundle "+bundle, err)
		}
	}
	slices.Reverse(names) // overlayfs lists the top layer first
	data := "lowerdir=" + strings.Join(names, ":") + ",upperdir=../upper,workdir=../work"
	if len(data) > maxMountData { // cannot happen below maxLowerLayers; said rather than truncated
		return fail("mount the rootfs overlay", fmt.Errorf("%d layers need %d bytes of mount options, the kernel takes %d", len(dirs), len(data), maxMountData))
	}
	if err := mountFrom(links, func() error { return p.mount("overlay", rootfs, "overlay", 0, data) }); err != nil {
		return fail("mount the rootfs overlay at "+rootfs, err)
	}
	return nil
}

// Release undoes a successful Pull into bundle, when what follows the
// pull fails (its runtime measurement): the rootfs is unmounted and
// removed, with the overlay's directories, so the bundle is as kata
// made it and nothing stays mounted. The layer store is untouched.
func (p *Puller) Release(bundle string) error {
	rootfs := filepath.Join(bundle, "rootfs")
	// EINVAL: not a mount point (flat rootfs); ENOENT: no rootfs.
	if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return classify("unmount "+rootfs, err)
	}
	if err := os.RemoveAll(filepath.Join(bundle, "overlay")); err != nil {
		return classify("bundle "+bundle, err)
	}
	if err := os.RemoveAll(rootfs); err != nil {
		return classify("bundle "+bundle, err)
	}
	return nil
}

// mountFrom runs mount with dir as the working directory of the thread
// that makes the call, and of no other: the goroutine locks its thread,
// gives it its own file-system context (unshare CLONE_FS), changes
// directory there and never unlocks, so the thread ends with the
// goroutine and the daemon's working directory is never touched.
func mountFrom(dir string, mount func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare the mount thread's working directory: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- err
			return
		}
		errc <- mount()
	}()
	return <-errc
}

// unpackFlat is the fallback without overlayfs: every layer applied in
// order straight into rootfs. A failure removes the partial rootfs.
func (p *Puller) unpackFlat(ctx context.Context, infos []layer, f *fetchLayer, rootfs string, bytes *int64) error {
	var counted atomic.Int64
	defer func() { *bytes += counted.Load() }()
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return classify("bundle rootfs "+rootfs, err)
	}
	for _, info := range infos {
		if err := f.apply(ctx, info, rootfs, false, &counted); err != nil {
			os.RemoveAll(rootfs)
			return err
		}
	}
	return nil
}
