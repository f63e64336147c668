package imagepull

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"go.podman.io/image/v5/types"
	"golang.org/x/sys/unix"
)

// maxMountData is the kernel's limit on mount options (one page).
const maxMountData = 4096 - 1

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
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w"))
	if err := p.mount("overlay", filepath.Join(dir, "m"), "overlay", 0, data); err != nil {
		return err
	}
	return unix.Unmount(filepath.Join(dir, "m"), unix.MNT_DETACH)
}

// mountOverlay mounts the layers (bottom first) at rootfs with a writable
// upper and work directory inside the bundle, so that removing the bundle
// after kata unmounts the rootfs removes the container's writes too.
func (p *Puller) mountOverlay(dirs []string, bundle, rootfs string) error {
	upper := filepath.Join(bundle, "overlay", "upper")
	work := filepath.Join(bundle, "overlay", "work")
	for _, d := range []string{rootfs, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return classify("bundle "+bundle, err)
		}
	}
	lower := slices.Clone(dirs)
	slices.Reverse(lower) // overlayfs lists the top layer first
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if len(data) > maxMountData {
		return &Error{Code: CodeUnsupported, Msg: fmt.Sprintf("%d layers do not fit one overlay mount's options (%d bytes, the kernel takes %d); a shorter work_dir helps", len(dirs), len(data), maxMountData)}
	}
	if err := p.mount("overlay", rootfs, "overlay", 0, data); err != nil {
		os.RemoveAll(filepath.Join(bundle, "overlay"))
		return classify("mount the rootfs overlay at "+rootfs, err)
	}
	return nil
}

// unpackFlat is the fallback without overlayfs: every layer applied in
// order straight into rootfs. A failure removes the partial rootfs.
func (p *Puller) unpackFlat(ctx context.Context, infos []types.BlobInfo, f *fetchLayer, rootfs string, bytes *int64) error {
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
