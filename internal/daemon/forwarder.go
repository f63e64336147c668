package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/proxy/forward"
	"github.com/cdh-proxy/cdh-proxy/proxy/httpapi"
)

// Forwarder is the api-server-rest personality installed beside separate
// confidential-data-hub and attestation-agent processes: HTTP only, every
// request forwarded to their sockets (so all share CDH's cache and token).
type Forwarder struct {
	Bind, CDHAddr, AAAddr string
	Features              core.Features
	Logger                *slog.Logger
	Notify                func(state string) error // nil → SDNotify
}

// Run serves until ctx ends.
func (f Forwarder) Run(ctx context.Context) error {
	log, notify := f.Logger, f.Notify
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if notify == nil {
		notify = SDNotify
	}
	cdhRemote, err := forward.NewRemote(f.CDHAddr)
	if err != nil {
		return ConfigError{err}
	}
	defer cdhRemote.Close()
	aaRemote, err := forward.NewRemote(f.AAAddr)
	if err != nil {
		return ConfigError{err}
	}
	defer aaRemote.Close()
	remoteAA := forward.RemoteAA{Remote: aaRemote}
	h, err := httpapi.NewHandler(httpapi.Config{
		Resources: forward.RemoteCDH{Remote: cdhRemote}, Logger: log, Features: f.Features,
		Evidence: remoteAA.Evidence, Token: remoteAA.Token, Measure: remoteAA.Measure,
	})
	if err != nil {
		return ConfigError{err}
	}
	ln, err := net.Listen("tcp", f.Bind)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.Bind, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "mode", "api-server-rest (forwarding)", "cdh_addr", f.CDHAddr, "aa_addr", f.AAAddr, "features", f.Features.String())
	if err := notify("READY=1"); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	return httpapi.Serve(ctx, ln, h, httpapi.DefaultBudget, DrainTimeout)
}
