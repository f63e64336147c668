// Package unixsock is the unix:// socket plumbing the ttrpc services and the
// api-server-rest forwarder share: URI parsing and listening safely.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Path strips the unix:// scheme guest-components configs use.
func Path(uri string) (string, error) {
	p := strings.TrimPrefix(uri, "unix://")
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("socket %q: want unix:///absolute/path", uri)
	}
	return p, nil
}

// Listen creates the socket for a ttrpc service: the parent directory is
// created (kata does not create AA's), a stale socket file is removed, but a
// socket another live process answers on is left alone and reported.
// The socket is 0600: only root (kata-agent) may call.
func Listen(uri string) (net.Listener, error) {
	path, err := Path(uri)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is already served by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
