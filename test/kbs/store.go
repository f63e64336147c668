package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Store reads and writes resources. Segments are already validated.
type Store interface {
	Read(repo, typ, tag string) ([]byte, error)
	Write(repo, typ, tag string, data []byte) error
}

// TreeStore is the directory layout of Trustee up to v0.18.x (the LocalFs
// resource backend before it moved onto key-value storage):
// <Dir>/<repo>/<type>/<tag>. <repo>/<type> may be a Secrets Store CSI mount
// (files are symlinks through ..data; see WriteCSI).
type TreeStore struct{ Dir string }

// Read implements Store. Opening the path resolves the ..data symlink once,
// so a concurrent rotation yields the old or the new file, never a mix.
func (t TreeStore) Read(repo, typ, tag string) ([]byte, error) {
	return os.ReadFile(filepath.Join(t.Dir, repo, typ, tag))
}

// Write implements Store.
func (t TreeStore) Write(repo, typ, tag string, data []byte) error {
	dir := filepath.Join(t.Dir, repo, typ)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, tag), data)
}

// LocalFsStore is Trustee's current LocalFs layout (key-value storage,
// v0.19.0 on): <Dir>/repository/<repo>\x2F<type>\x2F<tag> (four literal
// characters per "/"). Reads follow symlinks, as Trustee's do (a dangling
// link reads as missing).
type LocalFsStore struct{ Dir string }

func (l LocalFsStore) name(repo, typ, tag string) string {
	return filepath.Join(l.Dir, "repository", repo+`\x2F`+typ+`\x2F`+tag)
}

// Read implements Store.
func (l LocalFsStore) Read(repo, typ, tag string) ([]byte, error) {
	return os.ReadFile(l.name(repo, typ, tag))
}

// Write implements Store.
func (l LocalFsStore) Write(repo, typ, tag string, data []byte) error {
	if err := os.MkdirAll(filepath.Join(l.Dir, "repository"), 0o755); err != nil {
		return err
	}
	return writeAtomic(l.name(repo, typ, tag), data)
}

// LinkObjects links CSI-mounted objects into a LocalFs store the way an
// operator serves a Secrets Store CSI volume from current Trustee: the
// volume is mounted at a side path (csiDir) and each object gets one flat
// name, <Dir>/repository/<repo>\x2F<type>\x2F<object> -> <csiDir>/<object>.
// Reads follow the link and then the CSI driver's ..data link, so a
// rotation in csiDir arrives whole.
func (l LocalFsStore) LinkObjects(repo, typ, csiDir string, objects ...string) error {
	if err := os.MkdirAll(filepath.Join(l.Dir, "repository"), 0o755); err != nil {
		return err
	}
	for _, o := range objects {
		if strings.ContainsAny(o, "/\x00") || strings.HasPrefix(o, ".") {
			return fmt.Errorf("link: bad object name %q", o)
		}
		name, target := l.name(repo, typ, o), filepath.Join(csiDir, o)
		if cur, err := os.Readlink(name); err == nil && cur == target {
			continue // linked once for good: rotation happens behind ..data
		}
		// Replace atomically: a reader never finds the name missing.
		tmp := name + ".tmp-link"
		_ = os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, name); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}

// WriteCSI writes files into dir the way the Secrets Store CSI driver (and
// the kubelet atomic writer) does: a timestamped directory holds the data,
// "..data" points at it, and each name is a symlink "name -> ..data/name".
// Calling it again rotates atomically: the "..data" swap is one rename.
func WriteCSI(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ts := ".." + time.Now().UTC().Format("2006_01_02_15_04_05.000000000")
	tsDir := filepath.Join(dir, ts)
	if err := os.Mkdir(tsDir, 0o755); err != nil {
		return fmt.Errorf("csi: %w", err)
	}
	for name, data := range files {
		if strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
			return fmt.Errorf("csi: bad file name %q", name)
		}
		if err := os.WriteFile(filepath.Join(tsDir, name), data, 0o644); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(ts, tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	// Keep the previous generation: a reader that resolved ..data just before
	// the swap may still be opening a file in it. Older ones go.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() && strings.HasPrefix(n, "..") && n != ts && n != old {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// SealingKeyID is where WriteSealingKey publishes the key, as the kid
// sealed secrets name.
const SealingKeyID = "kbs:///default/signing-key/sealed-secret"

// WriteSealingKey makes an ES256 key for sealing secrets and publishes
// its public JWK in s at SealingKeyID, as an operator prepares one.
func WriteSealingKey(s Store) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	jwk, err := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: "ES256"}.MarshalJSON()
	if err != nil {
		return nil, err
	}
	if err := s.Write("default", "signing-key", "sealed-secret", jwk); err != nil {
		return nil, err
	}
	return key, nil
}
