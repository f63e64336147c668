package securemount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeSystem records what SecureMount does and fails the step named in
// fail; its state shows what a rollback left behind.
type fakeSystem struct {
	mu      sync.Mutex
	devices map[string]string // MAJ:MIN → path
	calls   []string
	stdin   map[string][]byte // tool call → what it read on stdin
	fail    string            // a call prefix that fails
	dump    string            // luksDump's JSON
	mkfsN   string            // mkfs.ext4 -n's output

	headers, mounts, links, mappers, dirs map[string]bool
	zeroed                                []uint64
	keyFiles                              map[string][]byte
	inUse                                 map[string]bool
}

func newFake() *fakeSystem {
	return &fakeSystem{
		devices: map[string]string{"254:16": "/dev/vdb", "254:0": "/dev/vda"},
		stdin:   map[string][]byte{}, headers: map[string]bool{}, mounts: map[string]bool{}, links: map[string]bool{},
		mappers: map[string]bool{}, dirs: map[string]bool{}, keyFiles: map[string][]byte{}, inUse: map[string]bool{},
		mkfsN: "mke2fs 1.47.0 (5-Feb-2023)\nCreating filesystem with 262144 4k blocks and 65536 inodes\nFilesystem UUID: x\nSuperblock backups stored on blocks: \n\t32768, 98304, 163840, 229376\n\n",
	}
}

func (f *fakeSystem) step(name string) error {
	f.calls = append(f.calls, name)
	if f.fail != "" && strings.HasPrefix(name, f.fail) {
		return &Error{Code: Internal, Msg: name + " failed"}
	}
	return nil
}

func (f *fakeSystem) ResolveDevice(id string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.devices[id]; ok {
		return p, nil
	}
	return "", failf(NotFound, nil, "deviceId %s: no such block device", id)
}

func (f *fakeSystem) CheckDevice(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inUse[path] {
		return failf(FailedPrecondition, nil, "device %s is in use", path)
	}
	return f.step("check " + path)
}

func (f *fakeSystem) PrepareMountPoint(path string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step("mountpoint " + path); err != nil {
		return false, err
	}
	if f.dirs[path] {
		return false, nil
	}
	f.dirs[path] = true
	return true, nil
}

func (f *fakeSystem) CheckAbsent(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.links[path] || f.dirs[path] {
		return failf(FailedPrecondition, nil, "mount point %s exists", path)
	}
	return f.step("absent " + path)
}

func (f *fakeSystem) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := name + " " + strings.Join(args, " ")
	if stdin != nil {
		f.stdin[call] = bytes.Clone(stdin)
	}
	if err := f.step(call); err != nil {
		return nil, err
	}
	switch {
	case name == "cryptsetup" && args[0] == "open":
		f.mappers[args[len(args)-1]] = true
	case name == "cryptsetup" && args[0] == "close":
		delete(f.mappers, args[1])
	case name == "cryptsetup" && args[0] == "luksDump":
		return []byte(f.dump), nil
	case name == "mkfs.ext4" && slices.Contains(args, "-n"):
		return []byte(f.mkfsN), nil
	}
	return nil, nil
}

func (f *fakeSystem) CreateHeader(path string, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.headers[path] {
		return failf(FailedPrecondition, nil, "header exists")
	}
	if err := f.step("header " + path); err != nil {
		return err
	}
	f.headers[path] = true
	return nil
}

func (f *fakeSystem) ReadKeyFile(path string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if k, ok := f.keyFiles[path]; ok {
		return bytes.Clone(k), nil
	}
	return nil, failf(NotFound, nil, "key file %s does not exist", path)
}

func (f *fakeSystem) ZeroBlocks(dev string, bs int, blocks []uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if bs != 4096 {
		return fmt.Errorf("block size %d", bs)
	}
	f.zeroed = append(f.zeroed, blocks...)
	return f.step("zero " + dev)
}

func (f *fakeSystem) Mount(dev, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step("mount " + dev + " " + target); err != nil {
		return err
	}
	f.mounts[target] = true
	return nil
}

func (f *fakeSystem) Unmount(target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounts, target)
	f.calls = append(f.calls, "unmount "+target)
	return nil
}

func (f *fakeSystem) Symlink(target, link string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step("link " + link + " " + target); err != nil {
		return err
	}
	f.links[link] = true
	return nil
}

func (f *fakeSystem) Remove(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.headers, path)
	delete(f.links, path)
	delete(f.dirs, path)
	f.calls = append(f.calls, "remove "+path)
	return nil
}

func (f *fakeSystem) StillSetUp(fileSystem bool, dev, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fileSystem && !f.mounts[target] || !fileSystem && !f.links[target] {
		return errors.New("gone")
	}
	return nil
}

// leftovers is what the fake machine still holds.
func (f *fakeSystem) leftovers() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var l []string
	for _, m := range []map[string]bool{f.headers, f.mounts, f.links, f.mappers} {
		for k := range m {
			l = append(l, k)
		}
	}
	slices.Sort(l)
	return strings.Join(l, " ")
}

func (f *fakeSystem) ran(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

type fakeKeys map[string][]byte

func (k fakeKeys) Fetch(_ context.Context, uri string) ([]byte, error) {
	if v, ok := k[uri]; ok {
		return bytes.Clone(v), nil
	}
	return nil, fmt.Errorf("kbs: %s: not found", uri)
}

func (k fakeKeys) Unseal(_ context.Context, s string) ([]byte, error) {
	return k.Fetch(context.Background(), s)
}

// kata's map (kata ≥ 3.28) for an ephemeral volume.
func ephemeral() Request {
	return Request{VolumeType: VolumeBlockDevice, MountPoint: "/run/kata-containers/eph", Options: map[string]string{
		"deviceId": "254:16", "sourceType": "empty", "targetType": "fileSystem", "filesystemType": "ext4",
		"mkfsOpts": "-O ^has_journal -m 0 -i 163840 -I 128", "encryptionType": "luks2", "dataIntegrity": "true",
	}}
}

func newService(f *fakeSystem, keys fakeKeys) *Service {
	return New(Config{System: f, Keys: keys, HeaderDir: "/hdr"})
}

func TestKataEphemeralVolume(t *testing.T) {
	f := newFake()
	s := newService(f, nil)
	if err := s.Mount(context.Background(), ephemeral()); err != nil {
		t.Fatal(err)
	}
	header := "/hdr/L2Rldi92ZGI.header" // base64url("/dev/vdb")
	format := f.ran("cryptsetup --batch-mode luksFormat")
	want := "cryptsetup --batch-mode luksFormat --type luks2 --cipher aes-xts-plain64 --key-size 512 --sector-size 4096 --header " + header +
		" --integrity hmac-sha256 --integrity-no-wipe --integrity-no-journal --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - /dev/vdb"
	if len(format) != 1 || format[0] != want {
		t.Fatalf("luksFormat:\n%q\nwant\n%q", format, want)
	}
	open := f.ran("cryptsetup open")
	if len(open) != 1 || !strings.HasPrefix(open[0], "cryptsetup open --type luks2 --header "+header+" --integrity-no-journal --key-file - /dev/vdb ") {
		t.Fatalf("open: %q", open)
	}
	// The same random 4096-byte key on stdin for both; never in an argument.
	if k1, k2 := f.stdin[format[0]], f.stdin[open[0]]; len(k1) != 4096 || !bytes.Equal(k1, k2) || bytes.Equal(k1, make([]byte, 4096)) {
		t.Fatalf("keys %d/%d bytes, equal %v", len(k1), len(k2), bytes.Equal(k1, k2))
	}
	// Block 0 and every backup zeroed before mkfs; lazy_itable_init=0 added.
	if !slices.Equal(f.zeroed, []uint64{0, 0, 32768, 98304, 163840, 229376}) {
		t.Fatalf("zeroed %v", f.zeroed)
	}
	fields := strings.Fields(open[0])
	mapper := fields[len(fields)-1]
	if mkfs := f.ran("mkfs.ext4 -F -O"); len(mkfs) != 1 || mkfs[0] != "mkfs.ext4 -F -O ^has_journal -m 0 -i 163840 -I 128 -E lazy_itable_init=0 /dev/mapper/"+mapper {
		t.Fatalf("mkfs: %q", mkfs)
	}
	if !f.mounts["/run/kata-containers/eph"] || !f.mappers[mapper] || !f.headers[header] {
		t.Fatalf("not set up: %s", f.leftovers())
	}
}

func TestImageStoreWithoutIntegrityAndRepeat(t *testing.T) {
	f := newFake()
	s := newService(f, nil)
	r := Request{VolumeType: VolumeBlockDevice, MountPoint: "/run/kata-containers/image/", Options: map[string]string{
		"deviceId": "254:0", "sourceType": "empty", "targetType": "fileSystem", "filesystemType": "ext4",
		"mkfsOpts": "-E lazy_journal_init", "encryptionType": "luks2", "dataIntegrity": "false",
	}}
	if err := s.Mount(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if f.zeroed != nil || len(f.ran("mkfs.ext4 -F -n")) != 0 {
		t.Fatal("integrity handling without integrity")
	}
	if mkfs := f.ran("mkfs.ext4"); len(mkfs) != 1 || !strings.HasPrefix(mkfs[0], "mkfs.ext4 -F -E lazy_journal_init /dev/mapper/") {
		t.Fatalf("mkfs: %q", mkfs)
	}
	// kata re-sends it for every container listing the device: done, once.
	before := len(f.calls)
	if err := s.Mount(context.Background(), r); err != nil {
		t.Fatalf("identical repeat: %v", err)
	}
	if len(f.calls) != before {
		t.Fatalf("the repeat did work: %q", f.calls[before:])
	}
	// Anything else for the same device is refused.
	r2 := ephemeral()
	r2.Options["deviceId"] = "254:0"
	if err := s.Mount(context.Background(), r2); CodeOf(err) != FailedPrecondition {
		t.Fatalf("another request for a set-up device: %v", err)
	}
	// A repeat after the mount went away is not reported as done.
	f.Unmount("/run/kata-containers/image")
	if err := s.Mount(context.Background(), r); CodeOf(err) != FailedPrecondition || !strings.Contains(err.Error(), "no longer in place") {
		t.Fatalf("repeat of a volume no longer mounted: %v", err)
	}
}

// A failure at any step undoes every earlier one, so a corrected retry
// succeeds.
func TestRollback(t *testing.T) {
	for _, step := range []string{"header", "cryptsetup --batch-mode luksFormat", "cryptsetup open", "zero", "mkfs.ext4 -F -n", "mkfs.ext4 -F -O", "mount"} {
		t.Run(step, func(t *testing.T) {
			f := newFake()
			f.fail = step
			s := newService(f, nil)
			err := s.Mount(context.Background(), ephemeral())
			if err == nil || !strings.Contains(err.Error(), step) {
				t.Fatalf("failing %s: %v", step, err)
			}
			if l := f.leftovers(); l != "" {
				t.Fatalf("left behind after a failed %s: %s", step, l)
			}
			if f.dirs["/run/kata-containers/eph"] {
				t.Fatal("the mount point it created was left")
			}
			f.fail = ""
			if err := s.Mount(context.Background(), ephemeral()); err != nil {
				t.Fatalf("retry after a failed %s: %v", step, err)
			}
		})
	}
	// A device link: the link is undone too.
	f := newFake()
	f.fail = "link"
	r := ephemeral()
	r.Options["targetType"] = "device"
	if err := newService(f, nil).Mount(context.Background(), r); err == nil || f.leftovers() != "" {
		t.Fatalf("link failure: %v, left %q", err, f.leftovers())
	}
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(r *Request)
		code Code
		msg  string
	}{
		{"bad deviceId", func(r *Request) { r.Options["deviceId"] = "8" }, InvalidArgument, "MAJ:MIN"},
		{"non-numeric deviceId", func(r *Request) { r.Options["deviceId"] = "8:x" }, InvalidArgument, "MAJ:MIN"},
		{"unknown device", func(r *Request) { r.Options["deviceId"] = "250:99" }, NotFound, "no such block device"},
		{"no device", func(r *Request) { delete(r.Options, "deviceId") }, InvalidArgument, "deviceId (MAJ:MIN) or devicePath"},
		{"relative devicePath", func(r *Request) { delete(r.Options, "deviceId"); r.Options["devicePath"] = "vdb" }, InvalidArgument, "absolute"},
		{"no sourceType", func(r *Request) { delete(r.Options, "sourceType") }, InvalidArgument, "sourceType is required"},
		{"wrong-case targetType", func(r *Request) { r.Options["targetType"] = "filesystem" }, InvalidArgument, "exact case"},
		{"zfs", func(r *Request) { r.Options["encryptionType"] = "zfs" }, InvalidArgument, "ZFS"},
		{"xfs", func(r *Request) { r.Options["filesystemType"] = "xfs" }, InvalidArgument, "ext4"},
		{"empty key", func(r *Request) { r.Options["key"] = "" }, InvalidArgument, "no key for a random one"},
		{"http key", func(r *Request) { r.Options["key"] = "https://x" }, InvalidArgument, "kbs:///"},
		{"bad mapper", func(r *Request) { r.Options["mapperName"] = "../x" }, InvalidArgument, "mapperName"},
		{"relative mount point", func(r *Request) { r.MountPoint = "x" }, InvalidArgument, "absolute"},
		{"volume type", func(r *Request) { r.VolumeType = "nas" }, InvalidArgument, "block-device"},
		{"device in use", func(r *Request) { r.Options["deviceId"] = "254:0" }, FailedPrecondition, "in use"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			f.inUse["/dev/vda"] = true
			r := ephemeral()
			c.edit(&r)
			err := newService(f, nil).Mount(context.Background(), r)
			if CodeOf(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%v (%v), want %v mentioning %q", err, CodeOf(err), c.code, c.msg)
			}
			if len(f.ran("cryptsetup")) != 0 {
				t.Fatal("cryptsetup ran for a refused request")
			}
		})
	}
}

func TestLegacyDialect(t *testing.T) {
	f := newFake()
	r := Request{VolumeType: VolumeLegacyBlockDevice, MountPoint: "/run/kata-containers/image", Options: map[string]string{
		"deviceId": "254:0", "encryptType": "LUKS", "dataIntegrity": "false",
	}}
	if err := newService(f, nil).Mount(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if len(f.ran("cryptsetup --batch-mode luksFormat")) != 1 || len(f.ran("mkfs.ext4 -F -E lazy_journal_init /dev/mapper/")) != 1 || !f.mounts["/run/kata-containers/image"] {
		t.Fatalf("legacy format: %q", f.calls)
	}
	for name, edit := range map[string]func(map[string]string){
		"encryptType": func(o map[string]string) { o["encryptType"] = "luks2" },
		"integrity":   func(o map[string]string) { o["dataIntegrity"] = "yes" },
		"deviceId":    func(o map[string]string) { delete(o, "deviceId") },
	} {
		o := map[string]string{"deviceId": "254:16", "encryptType": "LUKS", "dataIntegrity": "true"}
		edit(o)
		if err := newService(newFake(), nil).Mount(context.Background(), Request{VolumeType: VolumeLegacyBlockDevice, MountPoint: "/m", Options: o}); CodeOf(err) != InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
}

const goodDump = `{"keyslots":{"0":{"type":"luks2","key_size":64}},"segments":{"0":{"type":"crypt","encryption":"aes-xts-plain64","sector_size":4096}}}`

func TestEncryptedVolume(t *testing.T) {
	encrypted := func(key string) Request {
		return Request{VolumeType: VolumeBlockDevice, MountPoint: "/run/vol", Options: map[string]string{
			"devicePath": "/dev/vdb", "sourceType": "encrypted", "targetType": "fileSystem", "encryptionType": "luks2", "key": key,
		}}
	}
	// file:// keys are used as read, kbs:// keys as fetched; argon2id
	// (cryptsetup's default) is left alone; no header file, no mkfs.
	for key, want := range map[string]string{"file:///keys/k": "file key\n", "kbs:///default/disk/key": "kbs key", "sealed.x": "unsealed key"} {
		f := newFake()
		f.dump = goodDump
		f.keyFiles["/keys/k"] = []byte("file key\n")
		keys := fakeKeys{"kbs:///default/disk/key": []byte("kbs key"), "sealed.x": []byte("unsealed key")}
		if err := newService(f, keys).Mount(context.Background(), encrypted(key)); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		open := f.ran("cryptsetup open")
		if len(open) != 1 || strings.Contains(open[0], "--header") || string(f.stdin[open[0]]) != want {
			t.Fatalf("%s: open %q with key %q", key, open, f.stdin[open[0]])
		}
		if len(f.headers) != 0 || len(f.ran("mkfs.ext4")) != 0 || !f.mounts["/run/vol"] {
			t.Fatalf("%s: %q", key, f.calls)
		}
	}
	// A missing key keeps its cause; nothing is opened.
	f := newFake()
	f.dump = goodDump
	if err := newService(f, fakeKeys{}).Mount(context.Background(), encrypted("kbs:///default/disk/none")); err == nil || !strings.Contains(err.Error(), "not found") || len(f.ran("cryptsetup open")) != 0 {
		t.Fatalf("missing key: %v", err)
	}
	if err := newService(f, fakeKeys{}).Mount(context.Background(), encrypted("file:///nope")); CodeOf(err) != NotFound {
		t.Fatalf("missing key file: %v", err)
	}
	// Headers the host could have written to weaken the volume.
	for name, dump := range map[string]string{
		"cipher_null": `{"keyslots":{"0":{"key_size":64}},"segments":{"0":{"type":"crypt","encryption":"cipher_null-ecb"}}}`,
		"128-bit key": `{"keyslots":{"0":{"key_size":32}},"segments":{"0":{"type":"crypt","encryption":"aes-xts-plain64"}}}`,
		"odd slot":    `{"keyslots":{"0":{"key_size":64},"1":{"key_size":16}},"segments":{"0":{"type":"crypt","encryption":"aes-xts-plain64"}}}`,
		"no segments": `{"keyslots":{"0":{"key_size":64}},"segments":{}}`,
		"crc32 tags":  `{"keyslots":{"0":{"key_size":96}},"segments":{"0":{"type":"crypt","encryption":"aes-xts-plain64","integrity":{"type":"crc32c"}}}}`,
		"not json":    `LUKS header information`,
	} {
		f := newFake()
		f.dump = dump
		f.keyFiles["/keys/k"] = []byte("k")
		if err := newService(f, nil).Mount(context.Background(), encrypted("file:///keys/k")); CodeOf(err) != FailedPrecondition || len(f.ran("cryptsetup open")) != 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
	// With integrity on the device, it is opened without a journal.
	f = newFake()
	f.dump = `{"keyslots":{"0":{"key_size":96}},"segments":{"0":{"type":"crypt","encryption":"aes-xts-plain64","integrity":{"type":"hmac(sha256)"}}}}`
	f.keyFiles["/keys/k"] = []byte("k")
	r := encrypted("file:///keys/k")
	r.Options["targetType"], r.Options["mapperName"] = "device", "m1"
	if err := newService(f, nil).Mount(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if open := f.ran("cryptsetup open"); len(open) != 1 || open[0] != "cryptsetup open --type luks2 --integrity-no-journal --key-file - /dev/vdb m1" || !f.links["/run/vol"] {
		t.Fatalf("%q", f.calls)
	}
}

// Calls for one device run one at a time.
func TestSerializedPerDevice(t *testing.T) {
	f := newFake()
	s := newService(f, nil)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Mount(context.Background(), ephemeral())
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(f.ran("cryptsetup --batch-mode luksFormat")); n != 1 {
		t.Fatalf("formatted %d times", n)
	}
}

func TestSuperblocks(t *testing.T) {
	bs, b, err := superblocks(newFake().mkfsN)
	if err != nil || bs != 4096 || !slices.Equal(b, []uint64{0, 32768, 98304, 163840, 229376}) {
		t.Fatalf("%d %v %v", bs, b, err)
	}
	// One block group: no backups line; block 0 only.
	bs, b, err = superblocks("Creating filesystem with 16384 4k blocks and 16384 inodes\n\nAllocating group tables: done\n")
	if err != nil || bs != 4096 || !slices.Equal(b, []uint64{0}) {
		t.Fatalf("single group: %d %v %v", bs, b, err)
	}
	if _, _, err := superblocks("mke2fs: nonsense"); err == nil {
		t.Fatal("no block size accepted")
	}
}

func TestWithLazyItableInit(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "-E lazy_itable_init=0",
		"-E lazy_journal_init":        "-E lazy_journal_init,lazy_itable_init=0",
		"-Elazy_journal_init -m 0":    "-Elazy_journal_init,lazy_itable_init=0 -m 0",
		"-E lazy_itable_init=1":       "-E lazy_itable_init=1",
		"-O ^has_journal -m 0 -I 128": "-O ^has_journal -m 0 -I 128 -E lazy_itable_init=0",
	} {
		if got := strings.Join(withLazyItableInit(strings.Fields(in)), " "); got != want {
			t.Errorf("%q → %q, want %q", in, got, want)
		}
	}
}
