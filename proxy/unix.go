package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
)

// SocketPath strips the unix:// scheme guest-components configs use.
func SocketPath(uri string) (string, error) {
	p := strings.TrimPrefix(uri, "unix://")
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("socket %q: want unix:///absolute/path", uri)
	}
	return p, nil
}

// ListenUnix creates the socket for a ttrpc service: the parent directory is
// created (kata does not create AA's), a stale socket file is removed, but a
// socket another live process answers on is left alone and reported.
// The socket is 0600: only root (kata-agent) may call.
func ListenUnix(uri string) (net.Listener, error) {
	path, err := SocketPath(uri)
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

// ServeTTRPC serves srv on ln until ctx ends, then shuts down (waiting up to
// drain for calls in flight) and removes the socket file.
func ServeTTRPC(ctx context.Context, ln net.Listener, srv *ttrpc.Server, drain time.Duration) error {
	path := ln.Addr().String()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), drain)
		if serr := srv.Shutdown(sctx); serr != nil {
			_ = srv.Close()
		}
		cancel()
		<-errc
	}
	_ = os.Remove(path)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// NewTTRPCServer returns a server that only admits peers running as our own
// user (kata-agent and cdh-proxy both run as root in the guest).
func NewTTRPCServer() (*ttrpc.Server, error) {
	return ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
}
