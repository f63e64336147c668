package ttrpcapi

import (
	"context"
	"errors"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"
)

// NewServer returns a server that only admits peers running as our own
// user (kata-agent and cdh-proxy both run as root in the guest).
func NewServer() (*ttrpc.Server, error) {
	return ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
}

// Serve serves srv on ln until ctx ends, then shuts down (waiting up to
// drain for calls in flight) and removes the socket file.
func Serve(ctx context.Context, ln net.Listener, srv *ttrpc.Server, drain time.Duration) error {
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
