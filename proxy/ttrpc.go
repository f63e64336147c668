package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
)

// CDHConfig configures the Confidential Data Hub ttrpc services.
type CDHConfig struct {
	Resources Resources // required: the same cache and token as HTTP
	// SkipSealedSecretVerification accepts unsigned sealed secrets (cdh.toml
	// skip_sealed_secret_verification): only for old workshop setups.
	SkipSealedSecretVerification bool
	// SealedKeyDir resolves bare-name kids; "" → sealed.LocalKeyDir.
	SealedKeyDir string
	Budget       time.Duration // per call; zero → DefaultBudget
	Logger       *slog.Logger
}

// RegisterCDH registers GetResource, UnsealSecret and the services cdh-proxy
// does not implement (image pull, secure mount, key provider), which answer
// Unimplemented at once rather than hang a container start.
func RegisterCDH(srv *ttrpc.Server, cfg CDHConfig) error {
	if cfg.Resources == nil {
		return errors.New("proxy: CDH Resources is required")
	}
	if cfg.SealedKeyDir == "" {
		cfg.SealedKeyDir = sealed.LocalKeyDir
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
	cdh.RegisterSecureMountServiceService(srv, unimplemented{})
	cdh.RegisterImagePullServiceService(srv, unimplemented{})
	keyprovider.RegisterKeyProviderServiceService(srv, unimplemented{})
	return nil
}

type cdhService struct {
	cfg CDHConfig
	log *slog.Logger
}

// fetch returns a copy of the resource: the response is marshalled after
// the handler returns, by which time the cached buffer may be released.
func (s *cdhService) fetch(ctx context.Context, uri string) ([]byte, error) {
	v, err := s.get(ctx, uri)
	if err != nil {
		return nil, err
	}
	defer v.Release()
	return append([]byte(nil), v.Bytes()...), nil
}

// get serves kbs:///<repo>/<type>/<tag> as a resource and
// kbs+<plugin>:///<path>[?query] as a plugin call, as CDH's GetResource does.
func (s *cdhService) get(ctx context.Context, uri string) (*cache.Value, error) {
	if resource.IsPluginURI(uri) {
		pl, err := resource.ParsePluginURI(uri)
		if err != nil {
			return nil, err
		}
		plugins, ok := s.cfg.Resources.(Plugins)
		if !ok {
			return nil, fmt.Errorf("%w: %q", resource.ErrUnsupportedPlugin, pl.Name)
		}
		v, _, err := plugins.Plugin(ctx, pl, false)
		return v, err
	}
	p, err := resource.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	v, _, err := s.cfg.Resources.Resource(ctx, p, false)
	return v, err
}

func (s *cdhService) GetResource(ctx context.Context, req *cdh.GetResourceRequest) (*cdh.GetResourceResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	b, err := s.fetch(ctx, req.GetResourcePath())
	if err != nil {
		s.log.Warn("GetResource failed", "uri", req.GetResourcePath(), "err", err)
		return nil, toStatus(err)
	}
	return &cdh.GetResourceResponse{Resource: b}, nil
}

func (s *cdhService) UnsealSecret(ctx context.Context, in *cdh.UnsealSecretInput) (*cdh.UnsealSecretOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	plain, err := s.unseal(ctx, string(in.GetSecret()))
	if err != nil {
		// Never log the input: it is harmless alone, but the habit is not.
		s.log.Warn("UnsealSecret failed", "err", err)
		return nil, toStatus(err)
	}
	return &cdh.UnsealSecretOutput{Plaintext: plain}, nil
}

func (s *cdhService) unseal(ctx context.Context, input string) ([]byte, error) {
	verify := !s.cfg.SkipSealedSecretVerification
	sec, err := sealed.Parse(input, verify)
	if err != nil {
		return nil, err
	}
	if verify {
		key, err := s.signingKey(ctx, sec.Header.Kid)
		if err != nil {
			return nil, err
		}
		if err := sec.Verify(key); err != nil {
			return nil, err
		}
	}
	return s.fetch(ctx, sec.Secret.Name)
}

func (s *cdhService) signingKey(ctx context.Context, kid string) ([]byte, error) {
	file, local, err := sealed.KidFile(s.cfg.SealedKeyDir, kid)
	if err != nil {
		return nil, err
	}
	if local {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%w: signing key %s: %v", sealed.ErrSignature, file, err)
		}
		return b, nil
	}
	b, err := s.fetch(ctx, kid)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", kid, err)
	}
	return b, nil
}

// unimplemented answers the CDH services cdh-proxy leaves to others.
type unimplemented struct{}

func unimpl(what string) error {
	return status.Errorf(codes.Unimplemented, "%s is not implemented by cdh-proxy (only GetResource and UnsealSecret are)", what)
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

// TokenFunc returns the KBS token and the PEM private key of its TEE key.
type TokenFunc func(ctx context.Context) (token string, keyPEM []byte, err error)

// AAConfig configures the Attestation Agent ttrpc service.
type AAConfig struct {
	Tee      string       // GetTeeType
	Evidence EvidenceFunc // GetEvidence
	Token    TokenFunc    // GetToken("kbs")
	Budget   time.Duration
}

// RegisterAA registers AttestationAgentService.
func RegisterAA(srv *ttrpc.Server, cfg AAConfig) error {
	if cfg.Evidence == nil || cfg.Token == nil || cfg.Tee == "" {
		return errors.New("proxy: AA needs Tee, Evidence and Token")
	}
	if cfg.Budget <= 0 {
		cfg.Budget = DefaultBudget
	}
	aa.RegisterAttestationAgentServiceService(srv, &aaService{cfg: cfg})
	return nil
}

type aaService struct{ cfg AAConfig }

func (s *aaService) GetEvidence(ctx context.Context, req *aa.GetEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	ev, err := s.cfg.Evidence(ctx, req.GetRuntimeData())
	if err != nil {
		return nil, evidenceStatus(err)
	}
	return &aa.GetEvidenceResponse{Evidence: ev}, nil
}

// tokenJSON is AA's GetToken("kbs") answer, also served at /aa/token.
func tokenJSON(ctx context.Context, token TokenFunc) ([]byte, error) {
	tok, key, err := token(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Token      string `json:"token"`
		TeeKeypair string `json:"tee_keypair"`
	}{tok, string(key)})
}

func (s *aaService) GetToken(ctx context.Context, req *aa.GetTokenRequest) (*aa.GetTokenResponse, error) {
	if req.GetTokenType() != "kbs" {
		return nil, status.Errorf(codes.InvalidArgument, "token type %q not supported (only kbs)", req.GetTokenType())
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	b, err := tokenJSON(ctx, s.cfg.Token)
	if err != nil {
		return nil, toStatus(err)
	}
	return &aa.GetTokenResponse{Token: b}, nil
}

func (s *aaService) GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error) {
	return &aa.GetTeeTypeResponse{Tee: s.cfg.Tee}, nil
}

func (s *aaService) GetAdditionalTees(context.Context, *aa.GetAdditionalTeesRequest) (*aa.GetAdditionalTeesResponse, error) {
	return &aa.GetAdditionalTeesResponse{}, nil
}

// ExtendRuntimeMeasurement answers NOT_ENABLED, which CDH treats as non-fatal.
func (s *aaService) ExtendRuntimeMeasurement(context.Context, *aa.ExtendRuntimeMeasurementRequest) (*aa.ExtendRuntimeMeasurementResponse, error) {
	return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_NOT_ENABLED}, nil
}

func (s *aaService) GetAdditionalEvidence(context.Context, *aa.GetAdditionalEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	return nil, unimpl("GetAdditionalEvidence")
}

func (s *aaService) BindInitData(context.Context, *aa.BindInitDataRequest) (*aa.BindInitDataResponse, error) {
	return nil, unimpl("BindInitData")
}
