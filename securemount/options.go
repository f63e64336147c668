package securemount

import (
	"path/filepath"
	"strconv"
	"strings"
)

// Volume types kata-agent sends.
const (
	VolumeBlockDevice       = "block-device" // kata ≥ 3.28
	VolumeLegacyBlockDevice = "BlockDevice"  // kata 3.8–3.27
)

// Request is one SecureMount call.
type Request struct {
	VolumeType string
	Options    map[string]string
	MountPoint string
}

// spec is a validated request.
type spec struct {
	deviceID   string // "MAJ:MIN" as given, or ""
	devicePath string // as given, or resolved from deviceID
	empty      bool   // sourceType empty: format; else open an existing volume
	fileSystem bool   // targetType fileSystem: mount; else link the mapper
	mkfsOpts   []string
	integrity  bool
	key        string // key URI; "" → a random key
	mapper     string // "" → a random name
	mountPoint string
	mkdir      bool // the legacy dialect creates the mount point
}

// parse validates a request in either of kata's dialects. Like
// guest-components it ignores keys it does not know; unlike it, each
// error names the key and what is accepted.
func parse(r Request) (*spec, error) {
	if r.MountPoint == "" || !filepath.IsAbs(r.MountPoint) {
		return nil, invalid("mount_point %q: want an absolute path", r.MountPoint)
	}
	mp := filepath.Clean(r.MountPoint)
	switch r.VolumeType {
	case VolumeBlockDevice:
		return parseBlockDevice(r.Options, mp)
	case VolumeLegacyBlockDevice:
		return parseLegacy(r.Options, mp)
	}
	return nil, invalid("volume_type %q: want %q (kata ≥ 3.28) or %q (kata 3.8–3.27)", r.VolumeType, VolumeBlockDevice, VolumeLegacyBlockDevice)
}

func parseBlockDevice(o map[string]string, mp string) (*spec, error) {
	s := &spec{mountPoint: mp}
	if err := s.device(o["deviceId"], o["devicePath"]); err != nil {
		return nil, err
	}
	switch enc := o["encryptionType"]; enc {
	case "luks2":
	case "":
		return nil, invalid(`encryptionType is required: want "luks2"`)
	default:
		return nil, invalid(`encryptionType %q: want "luks2" (ZFS is not supported)`, enc)
	}
	switch st := o["sourceType"]; st {
	case "empty":
		s.empty = true
	case "encrypted":
	case "":
		return nil, invalid(`sourceType is required: want "empty" (format) or "encrypted" (open an existing volume)`)
	default:
		return nil, invalid(`sourceType %q: want "empty" or "encrypted"`, st)
	}
	switch tt := o["targetType"]; tt {
	case "fileSystem":
		s.fileSystem = true
	case "device":
	case "":
		return nil, invalid(`targetType is required: want "fileSystem" or "device"`)
	default:
		return nil, invalid(`targetType %q: want "fileSystem" or "device" (exact case)`, tt)
	}
	if fs, ok := o["filesystemType"]; ok && fs != "ext4" {
		return nil, invalid(`filesystemType %q: only "ext4" is supported`, fs)
	}
	s.mkfsOpts = strings.Fields(o["mkfsOpts"])
	s.integrity = o["dataIntegrity"] == "true"
	if k, ok := o["key"]; ok {
		if err := checkKeyURI(k); err != nil {
			return nil, err
		}
		s.key = k
	}
	if m, ok := o["mapperName"]; ok {
		if err := checkMapperName(m); err != nil {
			return nil, err
		}
		s.mapper = m
	}
	return s, nil
}

// parseLegacy reads kata 3.8–3.27's map: deviceId, encryptType=LUKS,
// dataIntegrity, and an optional encryptKey. Without a key the device is
// formatted (a random key), with one the volume on it is opened; either way
// an ext4 file system is mounted at the mount point, created if missing,
// as the luks-encrypt-storage script of those releases did.
func parseLegacy(o map[string]string, mp string) (*spec, error) {
	s := &spec{mountPoint: mp, fileSystem: true, mkdir: true, mkfsOpts: []string{"-E", "lazy_journal_init"}}
	if o["deviceId"] == "" {
		return nil, invalid("deviceId is required (MAJ:MIN)")
	}
	if err := s.device(o["deviceId"], ""); err != nil {
		return nil, err
	}
	if e := o["encryptType"]; e != "LUKS" {
		return nil, invalid(`encryptType %q: want "LUKS"`, e)
	}
	switch d := o["dataIntegrity"]; d {
	case "true":
		s.integrity = true
	case "false":
	default:
		return nil, invalid(`dataIntegrity %q: want "true" or "false"`, d)
	}
	if k, ok := o["encryptKey"]; ok && k != "" {
		if err := checkKeyURI(k); err != nil {
			return nil, err
		}
		s.key = k
	} else {
		s.empty = true
	}
	return s, nil
}

func (s *spec) device(id, path string) error {
	switch {
	case id != "":
		maj, min, ok := strings.Cut(id, ":")
		if !ok || strings.Contains(min, ":") {
			return invalid("deviceId %q: want MAJ:MIN in decimal", id)
		}
		for _, n := range []string{maj, min} {
			if _, err := strconv.ParseUint(n, 10, 32); err != nil {
				return invalid("deviceId %q: want MAJ:MIN in decimal", id)
			}
		}
		s.deviceID = id
	case path != "":
		if !filepath.IsAbs(path) {
			return invalid("devicePath %q: want an absolute path", path)
		}
		s.devicePath = filepath.Clean(path)
	default:
		return invalid("deviceId (MAJ:MIN) or devicePath is required")
	}
	return nil
}

func checkKeyURI(k string) error {
	switch {
	case strings.HasPrefix(k, "sealed."), strings.HasPrefix(k, "kbs://"), strings.HasPrefix(k, "kbs+"), strings.HasPrefix(k, "file:///"):
		return nil
	}
	return invalid("key: want sealed.…, kbs:///…, kbs+<plugin>:///… or file:///…, or no key for a random one (got %d bytes of something else)", len(k))
}

// checkMapperName keeps a caller's name to what dm and /dev/mapper take.
func checkMapperName(m string) error {
	if m == "" || len(m) > 100 || m == "." || m == ".." || m == "control" {
		return invalid("mapperName %q: want 1–100 characters of letters, digits, - _ .", m)
	}
	for _, c := range m {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return invalid("mapperName %q: want 1–100 characters of letters, digits, - _ .", m)
		}
	}
	return nil
}

// withLazyItableInit adds lazy_itable_init=0 to mkfs options (unless the
// caller set it), appended to the last -E value as guest-components does:
// with integrity and no wipe, ext4's lazy inode table init read blocks
// whose tags were never written and failed under parallel load.
func withLazyItableInit(opts []string) []string {
	out := append([]string(nil), opts...)
	for _, o := range out {
		if strings.Contains(o, "lazy_itable_init") {
			return out
		}
	}
	for i := len(out) - 1; i >= 0; i-- {
		switch {
		case out[i] == "-E" && i+1 < len(out):
			out[i+1] += ",lazy_itable_init=0"
			return out
		case strings.HasPrefix(out[i], "-E") && len(out[i]) > 2:
			out[i] += ",lazy_itable_init=0"
			return out
		}
	}
	return append(out, "-E", "lazy_itable_init=0")
}
