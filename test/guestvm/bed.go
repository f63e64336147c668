// Package guestvm is the guest test bed: a Debian kernel booted under QEMU
// into an initramfs where test/cmd/guest-init plays kata-agent and starts
// the drop-ins as kata-agent does. scripts/guest-vm.sh and the Go tests in
// test/guest both drive it through Build and Run.
//
// The kernel, its modules, busybox and cryptsetup come from Debian's
// packages (apt-get download, unpacked, never installed); mkfs.ext4 and the
// shared libraries come from the build machine's own Debian packages. The
// result is cached under the user's cache directory, keyed by the package
// versions, so only the part holding the project's binaries is rebuilt.
package guestvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// builderVersion changes whenever the base image's layout changes, so a
// cache built by an older layout is not reused.
const builderVersion = "guestvm-base-5"

// Modules the guest loads, in this order once their dependencies
// (resolved from modules.dep) are in: networking and disks over virtio,
// configfs (configfs-tsm's mount point), overlayfs (image rootfs),
// device-mapper with dm-crypt and dm-integrity (SecureMount), ext4, and the
// kernel crypto API dm-crypt and cryptsetup use (xts(aes) needs ecb;
// dm-crypt over dm-integrity needs authenc). The guest has no modprobe:
// a module the kernel would request on demand must be in this list.
var guestModules = []string{
	"virtio_pci", "virtio_net", "virtio_blk", "configfs", "overlay",
	"dm_mod", "dm_crypt", "dm_integrity", "ext4", "crc32c_generic",
	"xts", "ecb", "authenc", "algif_skcipher", "algif_hash", "algif_aead",
	// QEMU's emulated AES-NI and SSSE3 (-cpu max has them) run the
	// volumes' AES-XTS and HMAC-SHA256 several times faster than the
	// generic C code does under emulation.
	"aesni_intel", "sha256_ssse3",
}

// The Debian packages fetched and unpacked for the image.
var downloaded = []string{"busybox-static", "cryptsetup-bin", "libpopt0"}

// Binaries copied from the build machine's installed packages.
var hostBinaries = map[string]string{"/sbin/mkfs.ext4": "/sbin/mke2fs"}

// Base is a built (or cached) guest image without the project's binaries.
type Base struct {
	Dir     string // cache directory of this image
	Kernel  string // vmlinuz
	Initrd  string // base.cpio: busybox, tools, libraries, modules
	Release string // kernel release, e.g. 6.1.0-57-amd64
}

// BuildBase returns the cached base image for the current package
// versions, building it first when absent. cacheDir "" means the user's
// cache directory. Progress goes to log.
func BuildBase(ctx context.Context, cacheDir string, log func(string, ...any)) (*Base, error) {
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "dpkg-query"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("guest test bed: %s is missing: the test bed is built from Debian packages and needs a Debian-like build machine", tool)
		}
	}
	if cacheDir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("guest test bed: no cache directory: %w", err)
		}
		cacheDir = filepath.Join(d, "cdh-proxy", "guest")
	}
	kpkg, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	versions, err := packageVersions(ctx, append([]string{kpkg}, downloaded...))
	if err != nil {
		return nil, err
	}
	installed, err := installedVersions(ctx, "e2fsprogs", "libc6", "libcryptsetup12", "libgcc-s1")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintln(h, builderVersion, strings.Join(guestModules, ","))
	for _, v := range append(versions, installed...) {
		fmt.Fprintln(h, v)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	b := &Base{Dir: filepath.Join(cacheDir, key)}
	b.Kernel, b.Initrd = filepath.Join(b.Dir, "vmlinuz"), filepath.Join(b.Dir, "base.cpio")
	if rel, err := os.ReadFile(filepath.Join(b.Dir, "release")); err == nil {
		b.Release = string(rel)
		log("guest image: cached %s (%s)", b.Dir, strings.Join(versions, ", "))
		return b, nil
	}
	log("guest image: building %s from %s", b.Dir, strings.Join(append(versions, installed...), ", "))
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := b.build(ctx, tmp, kpkg); err != nil {
		return nil, err
	}
	// The directory appears whole or not at all; "release" is written last
	// inside it and marks it complete.
	if err := os.Rename(filepath.Join(tmp, "out"), b.Dir); err != nil && !errors.Is(err, os.ErrExist) {
		if _, serr := os.Stat(filepath.Join(b.Dir, "release")); serr != nil {
			return nil, err
		}
	}
	rel, err := os.ReadFile(filepath.Join(b.Dir, "release"))
	if err != nil {
		return nil, err
	}
	b.Release = string(rel)
	return b, nil
}

// kernelPackage is the versioned kernel package linux-image-amd64 names.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := aptOutput(ctx, "apt-cache", "depends", "linux-image-amd64")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("guest test bed: apt-cache depends linux-image-amd64 names no kernel package:\n%s", out)
}

// packageVersions gives "name=version" of each package's candidate.
func packageVersions(ctx context.Context, pkgs []string) ([]string, error) {
	out, err := aptOutput(ctx, "apt-cache", append([]string{"policy"}, pkgs...)...)
	if err != nil {
		return nil, err
	}
	cand := map[string]string{}
	var cur string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, " ") && strings.HasSuffix(line, ":") {
			cur = strings.TrimSuffix(line, ":")
		} else if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate: "); ok && cur != "" {
			cand[cur] = v
		}
	}
	var vs []string
	for _, p := range pkgs {
		v := cand[p]
		if v == "" || v == "(none)" {
			return nil, fmt.Errorf("guest test bed: Debian package %s has no installable version (apt-get update?)", p)
		}
		vs = append(vs, p+"="+v)
	}
	return vs, nil
}

func installedVersions(ctx context.Context, pkgs ...string) ([]string, error) {
	var vs []string
	for _, p := range pkgs {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", p).Output()
		if err != nil || len(out) == 0 {
			return nil, fmt.Errorf("guest test bed: Debian package %s is not installed on the build machine (apt-get install %s)", p, p)
		}
		vs = append(vs, p+"="+string(out)+" (installed)")
	}
	return vs, nil
}

// aptOutput runs an apt command; when its package lists are empty (a
// fresh machine), it runs apt-get update once and retries.
func aptOutput(ctx context.Context, name string, args ...string) (string, error) {
	run := func() (string, error) {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return string(out), nil
	}
	out, err := run()
	if err == nil && !strings.Contains(out, "Candidate: (none)") && strings.TrimSpace(out) != "" {
		return out, nil
	}
	if upd := exec.CommandContext(ctx, "apt-get", "update"); upd.Run() != nil {
		if err == nil {
			return out, nil
		}
		return "", fmt.Errorf("guest test bed: %w (and apt-get update failed: are we root?)", err)
	}
	return run()
}

func (b *Base) build(ctx context.Context, tmp, kpkg string) error {
	debs := filepath.Join(tmp, "debs")
	root := filepath.Join(tmp, "root")
	out := filepath.Join(tmp, "out")
	for _, d := range []string{debs, root, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	pkgs := append([]string{kpkg}, downloaded...)
	dl := exec.CommandContext(ctx, "apt-get", append([]string{"download"}, pkgs...)...)
	dl.Dir = debs
	if msg, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("guest test bed: apt-get download %s: %w\n%s", strings.Join(pkgs, " "), err, msg)
	}
	files, err := filepath.Glob(filepath.Join(debs, "*.deb"))
	if err != nil {
		return err
	}
	if len(files) != len(pkgs) {
		return fmt.Errorf("guest test bed: apt-get download gave %d packages, want %d (%s)", len(files), len(pkgs), strings.Join(pkgs, " "))
	}
	for _, f := range files {
		if msg, err := exec.CommandContext(ctx, "dpkg-deb", "-x", f, root).CombinedOutput(); err != nil {
			return fmt.Errorf("guest test bed: dpkg-deb -x %s: %w\n%s", filepath.Base(f), err, msg)
		}
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("guest test bed: %s holds %d kernels, want 1", kpkg, len(kernels))
	}
	release := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	if err := copyHostFile(kernels[0], filepath.Join(out, "vmlinuz")); err != nil {
		return err
	}

	f, err := os.Create(filepath.Join(out, "base.cpio"))
	if err != nil {
		return err
	}
	defer f.Close()
	a := newArchive(f)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "root", "mnt", "var"} {
		a.mkdirAll(d)
	}
	// The kernel opens /dev/console for init's stdio before anything
	// is mounted.
	a.charDev("dev/console", 0o600, 5, 1)
	a.copyFile("bin/busybox", filepath.Join(root, "bin", "busybox"))
	applets, err := exec.CommandContext(ctx, filepath.Join(root, "bin", "busybox"), "--list-full").Output()
	if err != nil {
		return fmt.Errorf("guest test bed: busybox --list-full: %w", err)
	}
	for _, ap := range strings.Fields(string(applets)) {
		if ap != "bin/busybox" && !strings.HasSuffix(ap, "/init") && ap != "sbin/init" {
			a.symlink(ap, "/bin/busybox")
		}
	}
	libDirs := []string{filepath.Join(root, "lib/x86_64-linux-gnu"), filepath.Join(root, "usr/lib/x86_64-linux-gnu"),
		"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}
	bins := map[string]string{"/sbin/cryptsetup": filepath.Join(root, "sbin", "cryptsetup"), "/sbin/integritysetup": filepath.Join(root, "sbin", "integritysetup")}
	for g, h := range hostBinaries {
		bins[g] = h
	}
	libs := map[string]string{}
	for _, g := range slices.Sorted(maps.Keys(bins)) {
		a.copyFile(g, bins[g])
		if err := neededLibs(bins[g], libDirs, libs); err != nil {
			return err
		}
	}
	// glibc loads libgcc_s at a thread's exit (dlopen, so no binary names
	// it): without it cryptsetup's Argon2id threads abort.
	if err := neededLibs(filepath.Join(root, "sbin", "cryptsetup"), libDirs, libs); err != nil {
		return err
	}
	libs["libgcc_s.so.1"] = "/lib/x86_64-linux-gnu/libgcc_s.so.1"
	for _, name := range slices.Sorted(maps.Keys(libs)) {
		a.copyFile("lib/x86_64-linux-gnu/"+name, libs[name])
	}
	a.copyFile("lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2")
	mods, err := moduleOrder(filepath.Join(root, "lib", "modules", release), guestModules)
	if err != nil {
		return err
	}
	for _, m := range mods {
		a.copyFile(filepath.Join("lib/modules", release, m), filepath.Join(root, "lib", "modules", release, m))
	}
	a.file("lib/modules/load", 0o644, []byte(strings.Join(mods, "\n")+"\n"))
	a.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.file("etc/group", 0o644, []byte("root:x:0:\n"))
	a.file("etc/hostname", 0o644, []byte("cdh-guest\n"))
	// kata's guest images ship this for the CDH's key provider (kata-agent
	// passes it to the CDH as OCICRYPT_KEYPROVIDER_CONFIG).
	a.file("etc/ocicrypt_config.json", 0o644, []byte(`{"key-providers":{"attestation-agent":{"ttrpc":"unix:///run/confidential-containers/cdh.sock"}}}`+"\n"))
	if err := a.close(); err != nil {
		return fmt.Errorf("guest test bed: writing base.cpio: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "release"), []byte(release), 0o644)
}

// neededLibs adds the shared libraries bin needs, transitively, found in
// dirs (first match wins) to libs (soname → host path).
func neededLibs(bin string, dirs []string, libs map[string]string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("guest test bed: %s: %w", bin, err)
	}
	needed, err := f.ImportedLibraries()
	f.Close()
	if err != nil {
		return fmt.Errorf("guest test bed: %s: %w", bin, err)
	}
	for _, so := range needed {
		if _, ok := libs[so]; ok || strings.HasPrefix(so, "ld-linux") {
			continue
		}
		found := ""
		for _, d := range dirs {
			p := filepath.Join(d, so)
			if real, err := filepath.EvalSymlinks(p); err == nil {
				found = real
				break
			}
		}
		if found == "" {
			return fmt.Errorf("guest test bed: %s needs %s, found in none of %s (install the Debian package that has it)", filepath.Base(bin), so, strings.Join(dirs, ", "))
		}
		libs[so] = found
		if err := neededLibs(found, dirs, libs); err != nil {
			return err
		}
	}
	return nil
}

// moduleOrder resolves names (module names, "-" and "_" alike) to their
// .ko paths under dir plus every dependency, dependencies first. The
// package carries no modules.dep (depmod makes it at install), so the
// dependencies come from each module's own .modinfo "depends=".
func moduleOrder(dir string, names []string) ([]string, error) {
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(dir, p)
			byName[modName(p)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest test bed: kernel modules: %w", err)
	}
	var order []string
	seen := map[string]bool{}
	var visit func(name, from string) error
	visit = func(name, from string) error {
		rel, ok := byName[strings.ReplaceAll(name, "-", "_")]
		if !ok {
			return fmt.Errorf("guest test bed: kernel module %s%s is not under %s (built in, or renamed?)", name, from, dir)
		}
		if seen[rel] {
			return nil
		}
		seen[rel] = true
		deps, err := moduleDepends(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, " (needed by "+name+")"); err != nil {
				return err
			}
		}
		order = append(order, rel)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("guest test bed: %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("guest test bed: %s has no .modinfo", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

func modName(path string) string {
	base := filepath.Base(path)
	base = base[:strings.Index(base, ".ko")]
	return strings.ReplaceAll(base, "-", "_")
}

func copyHostFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
