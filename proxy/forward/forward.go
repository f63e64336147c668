// Package forward is the api-server-rest personality's back end: it serves
// the HTTP front end's resources, plugins, evidence and token by calling
// separately installed confidential-data-hub and attestation-agent
// daemons over their ttrpc sockets.
package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/containerd/ttrpc"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/internal/unixsock"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Remote reaches the CDH and AA sockets of separately installed daemons, for
// the api-server-rest personality (as upstream ASR does). The connection is
// made lazily and re-made after a failure, so ASR may start before the others.
type Remote struct {
	socket string // unix path
	mu     sync.Mutex
	c      *ttrpc.Client
}

// NewRemote returns a lazy ttrpc client for a unix:// socket URI.
func NewRemote(uri string) (*Remote, error) {
	p, err := unixsock.Path(uri)
	if err != nil {
		return nil, err
	}
	return &Remote{socket: p}, nil
}

func (r *Remote) client(ctx context.Context) (*ttrpc.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		return r.c, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", r.socket)
	if err != nil {
		return nil, err
	}
	r.c = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() {
		r.mu.Lock()
		r.c = nil
		r.mu.Unlock()
	}))
	return r.c, nil
}

// Close closes the connection, if any.
func (r *Remote) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return nil
	}
	return r.c.Close()
}

// RemoteCDH serves resources and plugin calls over a CDH socket.
type RemoteCDH struct{ *Remote }

// Resource serves a resource through the CDH socket. refresh cannot be forwarded: the CDH API has
// no such flag, and the CDH process applies its own cache.
func (r RemoteCDH) Resource(ctx context.Context, p resource.Path, _ bool) (*cache.Value, cache.Meta, error) {
	return r.get(ctx, "kbs:///"+p.String())
}

// get is CDH's GetResource for a KBS URI.
func (r RemoteCDH) get(ctx context.Context, uri string) (*cache.Value, cache.Meta, error) {
	c, err := r.client(ctx)
	if err != nil {
		return nil, cache.Meta{}, core.Unreachable("CDH socket", err)
	}
	resp, err := cdh.NewGetResourceServiceClient(c).GetResource(ctx, &cdh.GetResourceRequest{ResourcePath: uri})
	if err != nil {
		return nil, cache.Meta{}, core.FromStatus(err)
	}
	return cache.NewValue(resp.GetResource()), cache.Meta{}, nil
}

// RemoteAA provides evidence and tokens over an AA socket.
type RemoteAA struct{ *Remote }

// Evidence is a core.EvidenceFunc.
func (r RemoteAA) Evidence(ctx context.Context, rd []byte) (json.RawMessage, error) {
	c, err := r.client(ctx)
	if err != nil {
		return nil, core.Unreachable("AA socket", err)
	}
	resp, err := aa.NewAttestationAgentServiceClient(c).GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: rd})
	if err != nil {
		return nil, core.FromStatus(err)
	}
	return resp.GetEvidence(), nil
}

// Token is a core.TokenFunc.
func (r RemoteAA) Token(ctx context.Context) (string, []byte, error) {
	c, err := r.client(ctx)
	if err != nil {
		return "", nil, core.Unreachable("AA socket", err)
	}
	resp, err := aa.NewAttestationAgentServiceClient(c).GetToken(ctx, &aa.GetTokenRequest{TokenType: "kbs"})
	if err != nil {
		return "", nil, core.FromStatus(err)
	}
	return core.ParseTokenJSON(resp.GetToken())
}

// Measure asks the AA to record ev (ExtendRuntimeMeasurement, at
// init_pcr). A socket that does not exist is eventlog.ErrNoAgent.
func (r RemoteAA) Measure(ctx context.Context, ev eventlog.Event) (eventlog.Result, error) {
	if _, err := os.Stat(r.socket); errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w at %s", eventlog.ErrNoAgent, r.socket)
	}
	c, err := r.client(ctx)
	if err != nil {
		return 0, core.Unreachable("AA socket", err)
	}
	resp, err := aa.NewAttestationAgentServiceClient(c).ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{
		Domain: ev.Domain, Operation: ev.Operation, Content: ev.Content,
	})
	if err != nil {
		return 0, core.FromStatus(err)
	}
	return eventlog.Result(resp.GetResult()), nil
}

// Plugin serves a plugin call over the CDH socket's GetResource, which takes
// kbs+<plugin>:/// URIs. The CDH process decides about caching.
func (r RemoteCDH) Plugin(ctx context.Context, p resource.Plugin, _ bool) (*cache.Value, cache.Meta, error) {
	uri := "kbs+" + p.Name + ":///" + p.Path
	if p.Query != "" {
		uri += "?" + p.Query
	}
	return r.get(ctx, uri)
}
