// Package securefile writes secrets to files: whole or not at all, readable
// by the owner only.
package securefile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data, mode 0600, atomically: a temporary file in
// the same directory is written, synced and renamed over path, so a reader
// sees the old content or the new, never a part. Missing parent
// directories are created 0700.
func Write(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
