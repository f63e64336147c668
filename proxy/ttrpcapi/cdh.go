// Package ttrpcapi is the ttrpc front end kata-agent calls: the Confidential
// Data Hub services (GetResource, UnsealSecret, PullImage, the key
// provider's UnWrapKey and SecureMount) and the
// Attestation Agent service, served on unix sockets. Statuses come from
// core.Classify and, for image pull and SecureMount, from their error codes.
package ttrpcapi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
)

// DefaultBudget bounds one call when the config leaves it zero: below
// kata-agent's 50 s so a failure is reported before the caller gives up.
const DefaultBudget = 30 * time.Second

// Secrets is what the CDH services call (core.Secrets).
type Secrets interface {
	Fetch(ctx context.Context, uri string) ([]byte, error)
	Unseal(ctx context.Context, input string) ([]byte, error)
}

// Images is what PullImage and UnWrapKey call (imagepull.Puller).
type Images interface {
	Pull(ctx context.Context, imageURL, bundlePath string) (string, error)
	// Release undoes a successful Pull whose measurement failed.
	Release(bundlePath string) error
	UnwrapKey(ctx context.Context, input []byte) ([]byte, error)
}

// CDHConfig configures the Confidential Data Hub ttrpc services.
type CDHConfig struct {
	Secrets Secrets // required: the same cache and token as HTTP
	Images  Images  // nil: PullImage and the key provider answer Unimplemented
	Mounts  Mounts  // nil: SecureMount answers Unimplemented
	// Measure records each pulled image in the runtime event log; nil
	// measures nothing.
	Measure eventlog.MeasureFunc
	Budget  time.Duration // per call but PullImage; zero → DefaultBudget
	Logger  *slog.Logger
}

// RegisterCDH registers GetResource, UnsealSecret, PullImage, the key
// provider and SecureMount; a service left nil in cfg answers
// Unimplemented at once rather than hang a container start.
func RegisterCDH(srv *ttrpc.Server, cfg CDHConfig) error {
	if cfg.Secrets == nil {
		return errors.New("ttrpcapi: CDH Secrets is required")
	}
	if cfg.Budget <= 0 {
		cfg.Budget = DefaultBudget
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &cdhService{cfg: cfg, log: cfg.Logger.With("component", "cdh-ttrpc")}
	cdh.RegisterGetResourceServiceService(srv, s)
	cdh.RegisterSealedSecretServiceService(srv, s)
	if cfg.Mounts != nil {
		cdh.RegisterSecureMountServiceService(srv, &mountService{mounts: cfg.Mounts, log: s.log})
	} else {
		cdh.RegisterSecureMountServiceService(srv, unimplemented{})
	}
	if cfg.Images != nil {
		im := &imageService{images: cfg.Images, budget: cfg.Budget, log: s.log, measure: cfg.Measure}
		cdh.RegisterImagePullServiceService(srv, im)
		keyprovider.RegisterKeyProviderServiceService(srv, im)
	} else {
		cdh.RegisterImagePullServiceService(srv, unimplemented{})
		keyprovider.RegisterKeyProviderServiceService(srv, unimplemented{})
	}
	return nil
}

type cdhService struct {
	cfg CDHConfig
	log *slog.Logger
}

func (s *cdhService) GetResource(ctx context.Context, req *cdh.GetResourceRequest) (*cdh.GetResourceResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	b, err := s.cfg.Secrets.Fetch(ctx, req.GetResourcePath())
	if err != nil {
		s.log.Warn("GetResource failed", "uri", req.GetResourcePath(), "err", err)
		return nil, core.Classify(err).GRPC()
	}
	return &cdh.GetResourceResponse{Resource: b}, nil
}

func (s *cdhService) UnsealSecret(ctx context.Context, in *cdh.UnsealSecretInput) (*cdh.UnsealSecretOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	plain, err := s.cfg.Secrets.Unseal(ctx, string(in.GetSecret()))
	if err != nil {
		// Never log the input: it is harmless alone, but the habit is not.
		s.log.Warn("UnsealSecret failed", "err", err)
		return nil, core.Classify(err).GRPC()
	}
	return &cdh.UnsealSecretOutput{Plaintext: plain}, nil
}

// unimplemented answers the CDH services cdh-proxy leaves to others.
type unimplemented struct{}

func unimpl(what string) error {
	return status.Errorf(codes.Unimplemented, "%s is not served by this process", what)
}

func (unimplemented) SecureMount(context.Context, *cdh.SecureMountRequest) (*cdh.SecureMountResponse, error) {
	return nil, unimpl("SecureMount")
}

func (unimplemented) PullImage(context.Context, *cdh.ImagePullRequest) (*cdh.ImagePullResponse, error) {
	return nil, unimpl("PullImage (guest image pull)")
}

func (unimplemented) WrapKey(context.Context, *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, unimpl("KeyProviderService.WrapKey")
}

func (unimplemented) UnWrapKey(context.Context, *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, unimpl("KeyProviderService.UnWrapKey")
}
