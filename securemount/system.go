package securemount

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// System is what SecureMount does to the machine; tests replace it.
type System interface {
	// ResolveDevice maps "MAJ:MIN" to /dev/<DEVNAME> through sysfs.
	ResolveDevice(id string) (string, error)
	// CheckDevice: path is a block device that nothing holds or mounts.
	CheckDevice(path string) error
	// PrepareMountPoint makes sure path is a directory nothing is mounted
	// on, creating it if missing (reported, so a rollback removes it).
	PrepareMountPoint(path string) (created bool, err error)
	// CheckAbsent: nothing exists at path (a link goes there).
	CheckAbsent(path string) error
	// Run runs a tool with stdin; a failure carries its stderr.
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
	CreateHeader(path string, size int64) error
	ReadKeyFile(path string) ([]byte, error)
	ZeroBlocks(dev string, blockSize int, blocks []uint64) error
	Mount(dev, target string) error // ext4, noatime
	Unmount(target string) error
	Symlink(target, link string) error
	Remove(path string) error
	// StillSetUp: dev is still mounted at target (fileSystem), or target
	// still links to dev.
	StillSetUp(fileSystem bool, dev, target string) error
}

// Host is the real machine.
type Host struct {
	SysRoot string // "" → /sys
}

func (h Host) sys() string {
	if h.SysRoot != "" {
		return h.SysRoot
	}
	return "/sys"
}

func (h Host) ResolveDevice(id string) (string, error) {
	b, err := os.ReadFile(filepath.Join(h.sys(), "dev", "block", id, "uevent"))
	if errors.Is(err, os.ErrNotExist) {
		return "", failf(NotFound, nil, "deviceId %s: no such block device", id)
	}
	if err != nil {
		return "", failf(Internal, err, "deviceId %s", id)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(l, "DEVNAME="); ok && name != "" && !strings.Contains(name, "..") {
			return "/dev/" + name, nil
		}
	}
	return "", failf(NotFound, nil, "deviceId %s: sysfs names no device node", id)
}

func (h Host) CheckDevice(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return failf(NotFound, nil, "device %s does not exist", path)
		}
		return failf(Internal, err, "device %s", path)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return failf(InvalidArgument, nil, "%s is not a block device", path)
	}
	id := fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	if holders, _ := os.ReadDir(filepath.Join(h.sys(), "dev", "block", id, "holders")); len(holders) > 0 {
		return failf(FailedPrecondition, nil, "device %s is in use (held by %s)", path, holders[0].Name())
	}
	if where, err := mountedDevice(id); err != nil {
		return failf(Internal, err, "reading the mount table")
	} else if where != "" {
		return failf(FailedPrecondition, nil, "device %s is in use (mounted at %s)", path, where)
	}
	return nil
}

// mountedDevice is where the device MAJ:MIN is mounted, or "".
func mountedDevice(id string) (string, error) {
	return scanMountinfo(func(f []string) bool { return f[2] == id })
}

// scanMountinfo returns the mount point of the first /proc/self/mountinfo
// line match accepts.
func scanMountinfo(match func(fields []string) bool) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && match(fields) {
			return unescapeMount(fields[4]), nil
		}
	}
	return "", sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes of space, tab, newline, \.
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func (h Host) PrepareMountPoint(path string) (bool, error) {
	fi, err := os.Lstat(path)
	created := false
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(path, 0o755); err != nil {
			return false, failf(Internal, err, "create mount point %s", path)
		}
		created = true
	case err != nil:
		return false, failf(Internal, err, "mount point %s", path)
	case !fi.IsDir():
		return false, failf(FailedPrecondition, nil, "mount point %s is not a directory", path)
	}
	if where, err := scanMountinfo(func(f []string) bool { return unescapeMount(f[4]) == path }); err != nil {
		return false, failf(Internal, err, "reading the mount table")
	} else if where != "" {
		return false, failf(FailedPrecondition, nil, "something is already mounted at %s", path)
	}
	return created, nil
}

func (h Host) CheckAbsent(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return failf(FailedPrecondition, nil, "mount point %s exists; targetType device makes it a link to the mapper", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return failf(Internal, err, "mount point %s", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return failf(Internal, err, "mount point's directory")
	}
	return nil
}

func (h Host) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, failf(Internal, nil, "%s is not installed in the guest (PATH=%s)", name, os.Getenv("PATH"))
	}
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Messages are forced to English so errors read the same everywhere.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		// The command line is safe to name: keys travel on stdin only.
		return stdout.Bytes(), failf(Internal, err, "%s %s failed: %s", name, strings.Join(args, " "), msg)
	}
	return stdout.Bytes(), nil
}

func (h Host) CreateHeader(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return failf(Internal, err, "header directory")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return failf(FailedPrecondition, nil, "a LUKS header for this device exists already (%s): it was formatted before in this boot, outside this process", path)
	}
	if err != nil {
		return failf(Internal, err, "create LUKS header file")
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return failf(Internal, err, "size LUKS header file")
	}
	return nil
}

func (h Host) ReadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, failf(NotFound, nil, "key file %s does not exist", path)
	}
	if err != nil {
		return nil, failf(Internal, err, "key file %s", path)
	}
	return b, nil
}

func (h Host) ZeroBlocks(dev string, blockSize int, blocks []uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return failf(Internal, err, "open %s", dev)
	}
	defer f.Close()
	zero := make([]byte, blockSize)
	for _, b := range blocks {
		if _, err := f.WriteAt(zero, int64(b)*int64(blockSize)); err != nil {
			return failf(Internal, err, "zero block %d of %s", b, dev)
		}
	}
	if err := f.Sync(); err != nil {
		return failf(Internal, err, "sync %s", dev)
	}
	return nil
}

func (h Host) Mount(dev, target string) error {
	if err := unix.Mount(dev, target, "ext4", unix.MS_NOATIME, ""); err != nil {
		return failf(Internal, err, "mount %s on %s (ext4, noatime)", dev, target)
	}
	return nil
}

func (h Host) Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return failf(Internal, err, "unmount %s", target)
	}
	return nil
}

func (h Host) Symlink(target, link string) error {
	if err := os.Symlink(target, link); err != nil {
		return failf(Internal, err, "link %s to %s", link, target)
	}
	return nil
}

func (h Host) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (h Host) StillSetUp(fileSystem bool, dev, target string) error {
	if !fileSystem {
		got, err := os.Readlink(target)
		if err != nil || got != dev {
			return fmt.Errorf("%s no longer links to %s", target, dev)
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	id := fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	where, err := scanMountinfo(func(f []string) bool { return f[2] == id && unescapeMount(f[4]) == target })
	if err != nil {
		return err
	}
	if where == "" {
		return fmt.Errorf("%s is no longer mounted at %s", dev, target)
	}
	return nil
}
