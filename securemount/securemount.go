// Package securemount is the CDH's SecureMount: encrypted block storage as
// kata-agent asks for it, for its trusted image store (/dev/trusted_store
// at /run/kata-containers/image/) and for ephemeral block volumes
// (encryption_key=ephemeral). A device is formatted (LUKS2, aes-xts-plain64,
// 4096-byte sectors, the header detached in tmpfs) or an existing volume
// opened, optionally under dm-integrity (hmac-sha256), then an ext4 file
// system is mounted or the mapper linked — with the distribution's
// cryptsetup and mkfs.ext4, as guest images ship them, so the binary stays
// static and cgo-free.
//
// Unlike guest-components it rolls back whatever a failed call set up, so a
// corrected retry works; treats an identical repeat (kata re-sends the image
// store's request for every container that lists the device) as done;
// serializes calls per device; answers each failure with an honest code and
// cause; and refuses an existing volume whose header would not protect it.
package securemount

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultHeaderDir is where detached LUKS2 headers live, as guest-components
// keeps them: tmpfs, so a formatted volume cannot be reopened after reboot
// and its header never sits on the host-controlled disk.
const DefaultHeaderDir = "/run/confidential-containers/cdh/luks-headers"

const (
	headerSize   = 16 << 20 // sparse; LUKS2's default metadata + keyslot area fits
	randomKeyLen = 4096
	// PBKDF2 at cryptsetup's floor for random keys: a 4096-byte random key
	// has full entropy, so stretching buys nothing, and Argon2id's default
	// costs ~2 s and up to half the guest's memory per volume
	// (BENCHMARKS.md, "SecureMount key derivation").
	minPBKDF2Iterations = "1000"
	rollbackTimeout     = 30 * time.Second
)

// Keys fetches key material named by a URI: the daemon's core.Secrets.
type Keys interface {
	Fetch(ctx context.Context, uri string) ([]byte, error) // kbs:///…, kbs+<plugin>:///…
	Unseal(ctx context.Context, secret string) ([]byte, error)
}

// Config is a Service's collaborators.
type Config struct {
	Keys      Keys
	System    System    // nil → the real machine (Host)
	HeaderDir string    // "" → DefaultHeaderDir
	Random    io.Reader // nil → crypto/rand
	Logger    *slog.Logger
}

// Service answers SecureMount calls.
type Service struct {
	cfg Config
	sys System
	log *slog.Logger

	mu      sync.Mutex
	locks   map[string]*sync.Mutex // per device path
	volumes map[string]volume      // per device path: what this process set up
}

// volume is a device this process set up.
type volume struct {
	request    string // fingerprint of the request that set it up
	mapper     string
	mountPoint string
}

// New returns a Service.
func New(cfg Config) *Service {
	s := &Service{cfg: cfg, sys: cfg.System, log: cfg.Logger, locks: map[string]*sync.Mutex{}, volumes: map[string]volume{}}
	if s.sys == nil {
		s.sys = Host{}
	}
	if s.cfg.HeaderDir == "" {
		s.cfg.HeaderDir = DefaultHeaderDir
	}
	if s.cfg.Random == nil {
		s.cfg.Random = rand.Reader
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// Mount carries out one SecureMount request.
func (s *Service) Mount(ctx context.Context, r Request) error {
	sp, err := parse(r)
	if err != nil {
		return err
	}
	if sp.deviceID != "" {
		p, err := s.sys.ResolveDevice(sp.deviceID)
		if err != nil {
			return err
		}
		sp.devicePath = p
	}
	unlock := s.lock(sp.devicePath)
	defer unlock()

	fp := fingerprint(r)
	s.mu.Lock()
	v, done := s.volumes[sp.devicePath]
	s.mu.Unlock()
	if done {
		if v.request != fp {
			return failf(FailedPrecondition, nil, "device %s is already set up by an earlier SecureMount (mapper %s at %s); a different request for it is refused", sp.devicePath, v.mapper, v.mountPoint)
		}
		if err := s.sys.StillSetUp(sp.fileSystem, "/dev/mapper/"+v.mapper, v.mountPoint); err != nil {
			return failf(FailedPrecondition, err, "device %s was set up by an earlier identical SecureMount but is no longer in place", sp.devicePath)
		}
		s.log.Info("secure mount: identical repeat, already in place", "device", sp.devicePath, "mapper", v.mapper, "mount_point", v.mountPoint)
		return nil
	}
	if err := s.sys.CheckDevice(sp.devicePath); err != nil {
		return err
	}
	if sp.mapper == "" {
		if sp.mapper, err = s.randomName(); err != nil {
			return err
		}
	}
	start := time.Now()
	var undo []func(context.Context) error
	if err := s.setUp(ctx, sp, &undo); err != nil {
		s.rollback(undo, sp)
		return err
	}
	s.mu.Lock()
	s.volumes[sp.devicePath] = volume{request: fp, mapper: sp.mapper, mountPoint: sp.mountPoint}
	s.mu.Unlock()
	s.log.Info("secure mount: done", "device", sp.devicePath, "mapper", sp.mapper, "mount_point", sp.mountPoint,
		"source", map[bool]string{true: "empty", false: "encrypted"}[sp.empty], "integrity", sp.integrity, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// setUp does the work, pushing an undo step after each step that changed
// something.
func (s *Service) setUp(ctx context.Context, sp *spec, undo *[]func(context.Context) error) error {
	if sp.fileSystem {
		created, err := s.sys.PrepareMountPoint(sp.mountPoint)
		if err != nil {
			return err
		}
		if created {
			*undo = append(*undo, func(context.Context) error { return s.sys.Remove(sp.mountPoint) })
		}
	} else if err := s.sys.CheckAbsent(sp.mountPoint); err != nil {
		return err
	}
	key, pbkdf, err := s.key(ctx, sp.key)
	if err != nil {
		return err
	}
	defer clear(key)

	header := ""
	if sp.empty {
		header = filepath.Join(s.cfg.HeaderDir, base64.RawURLEncoding.EncodeToString([]byte(sp.devicePath))+".header")
		if err := s.sys.CreateHeader(header, headerSize); err != nil {
			return err
		}
		*undo = append(*undo, func(context.Context) error { return s.sys.Remove(header) })
		args := []string{"--batch-mode", "luksFormat", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
			"--sector-size", "4096", "--header", header}
		if sp.integrity {
			args = append(args, "--integrity", "hmac-sha256", "--integrity-no-wipe", "--integrity-no-journal")
		}
		args = append(args, pbkdf...)
		args = append(args, "--key-file", "-", sp.devicePath)
		if _, err := s.sys.Run(ctx, key, "cryptsetup", args...); err != nil {
			return err
		}
	} else {
		integrity, err := s.checkHeader(ctx, sp.devicePath)
		if err != nil {
			return err
		}
		sp.integrity = integrity
	}

	args := []string{"open", "--type", "luks2"}
	if header != "" {
		args = append(args, "--header", header)
	}
	if sp.integrity {
		// No dm-integrity journal: it writes every block twice to survive
		// a crash between data and tag, but a formatted volume cannot be
		// reopened after a crash anyway (its header lives in tmpfs), and an
		// opened one belongs to this boot. guest-components meant the same
		// (its v0.18–0.19 opened without a journal; its later luksFormat
		// flag does not reach its open).
		args = append(args, "--integrity-no-journal")
	}
	args = append(args, "--key-file", "-", sp.devicePath, sp.mapper)
	if _, err := s.sys.Run(ctx, key, "cryptsetup", args...); err != nil {
		return err
	}
	*undo = append(*undo, func(ctx context.Context) error {
		_, err := s.sys.Run(ctx, nil, "cryptsetup", "close", sp.mapper)
		return err
	})
	mapperDev := "/dev/mapper/" + sp.mapper

	if !sp.fileSystem {
		if err := s.sys.Symlink(mapperDev, sp.mountPoint); err != nil {
			return err
		}
		*undo = append(*undo, func(context.Context) error { return s.sys.Remove(sp.mountPoint) })
		return nil
	}
	if sp.empty {
		if err := s.mkfs(ctx, sp, mapperDev); err != nil {
			return err
		}
	}
	if err := s.sys.Mount(mapperDev, sp.mountPoint); err != nil {
		return err
	}
	*undo = append(*undo, func(context.Context) error { return s.sys.Unmount(sp.mountPoint) })
	return nil
}

// key returns the key and the PBKDF arguments for luksFormat.
func (s *Service) key(ctx context.Context, uri string) ([]byte, []string, error) {
	if uri == "" {
		k := make([]byte, randomKeyLen)
		if _, err := io.ReadFull(s.cfg.Random, k); err != nil {
			return nil, nil, failf(Internal, err, "random key")
		}
		return k, []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", minPBKDF2Iterations}, nil
	}
	var k []byte
	var err error
	switch {
	case strings.HasPrefix(uri, "file://"):
		k, err = s.sys.ReadKeyFile(strings.TrimPrefix(uri, "file://"))
	case strings.HasPrefix(uri, "sealed."):
		k, err = s.cfg.Keys.Unseal(ctx, uri)
		if err != nil {
			err = fmt.Errorf("key: unseal the sealed secret: %w", err)
		}
	default:
		k, err = s.cfg.Keys.Fetch(ctx, uri)
		if err != nil {
			err = fmt.Errorf("key %s: %w", uri, err)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if len(k) == 0 {
		return nil, nil, invalid("key: it is empty")
	}
	return k, nil, nil
}

// luksMetadata is the part of `cryptsetup luksDump --dump-json-metadata`
// that says how a volume is protected.
type luksMetadata struct {
	Keyslots map[string]struct {
		KeySize int `json:"key_size"`
	} `json:"keyslots"`
	Segments map[string]struct {
		Type       string `json:"type"`
		Encryption string `json:"encryption"`
		Integrity  *struct {
			Type string `json:"type"`
		} `json:"integrity"`
	} `json:"segments"`
}

// checkHeader refuses an existing volume whose on-device header (which
// the host controls) would not protect it: a null cipher, or a volume key
// of a size other than AES-256-XTS's 512 bits (plus 256 for hmac-sha256
// integrity). It reports whether the volume uses integrity.
func (s *Service) checkHeader(ctx context.Context, dev string) (bool, error) {
	out, err := s.sys.Run(ctx, nil, "cryptsetup", "luksDump", "--dump-json-metadata", dev)
	if err != nil {
		return false, failf(FailedPrecondition, err, "%s holds no LUKS2 volume cdh-proxy can read", dev)
	}
	var m luksMetadata
	if err := json.Unmarshal(out, &m); err != nil {
		return false, failf(FailedPrecondition, err, "%s: LUKS2 metadata", dev)
	}
	if len(m.Segments) == 0 || len(m.Keyslots) == 0 {
		return false, failf(FailedPrecondition, nil, "%s: LUKS2 header without segments or keyslots", dev)
	}
	integrity := false
	for _, seg := range m.Segments {
		if seg.Type != "crypt" || seg.Encryption == "" || strings.HasPrefix(seg.Encryption, "cipher_null") {
			return false, failf(FailedPrecondition, nil, "%s: the volume's header gives segment type %q, encryption %q: refused (not encrypted)", dev, seg.Type, seg.Encryption)
		}
		if seg.Integrity != nil {
			if seg.Integrity.Type != "hmac(sha256)" {
				return false, failf(FailedPrecondition, nil, "%s: integrity %q: only hmac(sha256) is accepted", dev, seg.Integrity.Type)
			}
			integrity = true
		}
	}
	want := 64
	if integrity {
		want = 96
	}
	for id, ks := range m.Keyslots {
		if ks.KeySize != want {
			return false, failf(FailedPrecondition, nil, "%s: keyslot %s holds a %d-bit volume key, want %d (AES-256-XTS%s): refused", dev, id, ks.KeySize*8, want*8,
				map[bool]string{true: " + hmac-sha256", false: ""}[integrity])
		}
	}
	return integrity, nil
}

// mkfs makes the ext4 file system. Under dm-integrity without a wipe, a
// block never written has no valid tag, and mke2fs reads block 0 and the
// superblock locations before writing them: block 0 is zeroed first, then
// a dry run with the caller's options (which can move the backups; the
// upstream dry run leaves them out) gives the backups, which are zeroed
// too. A device of a single block group has no backups; block 0 is still
// zeroed (guest-components fails there).
func (s *Service) mkfs(ctx context.Context, sp *spec, dev string) error {
	opts := sp.mkfsOpts
	if sp.integrity {
		opts = withLazyItableInit(opts)
		if err := s.sys.ZeroBlocks(dev, 4096, []uint64{0}); err != nil {
			return err
		}
		out, err := s.sys.Run(ctx, nil, "mkfs.ext4", append(append([]string{"-F", "-n"}, opts...), dev)...)
		if err != nil {
			return err
		}
		bs, blocks, err := superblocks(string(out))
		if err != nil {
			return failf(Internal, err, "mkfs.ext4 -n %s", dev)
		}
		if err := s.sys.ZeroBlocks(dev, bs, blocks); err != nil {
			return err
		}
	}
	_, err := s.sys.Run(ctx, nil, "mkfs.ext4", append(append([]string{"-F"}, opts...), dev)...)
	return err
}

var createdWith = regexp.MustCompile(`Creating filesystem with \d+ (\d+)k blocks`)

// superblocks reads a dry run of mke2fs: the block size and block 0 plus
// every superblock backup.
func superblocks(out string) (int, []uint64, error) {
	bs := 0
	if m := createdWith.FindStringSubmatch(out); m != nil {
		k, _ := strconv.Atoi(m[1])
		bs = k * 1024
	}
	if bs < 1024 || bs > 65536 || bs&(bs-1) != 0 {
		return 0, nil, fmt.Errorf("no block size in mke2fs's output")
	}
	blocks := []uint64{0}
	const marker = "Superblock backups stored on blocks:"
	if i := strings.Index(out, marker); i >= 0 {
		for _, tok := range strings.Fields(out[i+len(marker):]) {
			n, err := strconv.ParseUint(strings.TrimSuffix(tok, ","), 10, 64)
			if err != nil {
				break
			}
			blocks = append(blocks, n)
		}
	}
	return bs, blocks, nil
}

func (s *Service) rollback(undo []func(context.Context) error, sp *spec) {
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i](ctx); err != nil {
			s.log.Error("secure mount: rollback step failed; the device may need a reboot to be usable", "device", sp.devicePath, "err", err)
		}
	}
	s.log.Info("secure mount: failed, rolled back", "device", sp.devicePath, "steps", len(undo))
}

func (s *Service) lock(dev string) func() {
	s.mu.Lock()
	l := s.locks[dev]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[dev] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// randomName is a UUIDv4 in text, as guest-components names mappers.
func (s *Service) randomName() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(s.cfg.Random, b[:]); err != nil {
		return "", failf(Internal, err, "random mapper name")
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// fingerprint identifies a request for the identical-repeat check. A key
// URI is part of it (it names, not holds, the key).
func fingerprint(r Request) string {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range r.Options {
			if !yield(k) {
				return
			}
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%q %q", r.VolumeType, filepath.Clean(r.MountPoint))
	for _, k := range keys {
		fmt.Fprintf(&b, " %q=%q", k, r.Options[k])
	}
	return b.String()
}
