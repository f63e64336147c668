package ttrpcapi

import (
	"context"
	"errors"
	"time"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AAConfig configures the Attestation Agent ttrpc service.
type AAConfig struct {
	Tee      string            // GetTeeType
	Evidence core.EvidenceFunc // GetEvidence
	Token    core.TokenFunc    // GetToken("kbs")
	// Measure records ExtendRuntimeMeasurement; nil answers NOT_ENABLED.
	Measure *eventlog.Recorder
	Budget  time.Duration
}

// RegisterAA registers AttestationAgentService.
func RegisterAA(srv *ttrpc.Server, cfg AAConfig) error {
	if cfg.Evidence == nil || cfg.Token == nil || cfg.Tee == "" {
		return errors.New("ttrpcapi: AA needs Tee, Evidence and Token")
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
		return nil, core.ClassifyEvidence(err).GRPC()
	}
	return &aa.GetEvidenceResponse{Evidence: ev}, nil
}

func (s *aaService) GetToken(ctx context.Context, req *aa.GetTokenRequest) (*aa.GetTokenResponse, error) {
	if req.GetTokenType() != "kbs" {
		return nil, status.Errorf(codes.InvalidArgument, "token type %q not supported (only kbs)", req.GetTokenType())
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	b, err := core.TokenJSON(ctx, s.cfg.Token)
	if err != nil {
		return nil, core.Classify(err).GRPC()
	}
	return &aa.GetTokenResponse{Token: b}, nil
}

func (s *aaService) GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error) {
	return &aa.GetTeeTypeResponse{Tee: s.cfg.Tee}, nil
}

func (s *aaService) GetAdditionalTees(context.Context, *aa.GetAdditionalTeesRequest) (*aa.GetAdditionalTeesResponse, error) {
	return &aa.GetAdditionalTeesResponse{}, nil
}

// ExtendRuntimeMeasurement records an event in the runtime event log:
// NOT_ENABLED without enable_eventlog, NOT_SUPPORTED on a TEE without
// runtime registers, else OK once the register is extended and the event
// logged. RegisterIndex is a PCR number, mapped by the platform.
func (s *aaService) ExtendRuntimeMeasurement(ctx context.Context, req *aa.ExtendRuntimeMeasurementRequest) (*aa.ExtendRuntimeMeasurementResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Budget)
	defer cancel()
	ev := eventlog.Event{Domain: req.GetDomain(), Operation: req.GetOperation(), Content: req.GetContent()}
	res, err := s.cfg.Measure.Record(ctx, ev, req.RegisterIndex)
	if err != nil {
		return nil, measureStatus(err)
	}
	return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult(res)}, nil
}

// measureStatus gives a failed measurement its status: the caller's
// mistake is InvalidArgument, a log that cannot be continued
// FailedPrecondition, the registers' failure Internal (upstream answers
// Internal for everything).
func measureStatus(err error) error {
	var ie *eventlog.InvalidEventError
	var ce *eventlog.CorruptError
	switch {
	case errors.As(err, &ie), errors.Is(err, eventlog.ErrRegister):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &ce):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.Error(codes.DeadlineExceeded, "extend runtime measurement: "+err.Error())
	}
	return status.Error(codes.Internal, "extend runtime measurement: "+err.Error())
}

func (s *aaService) GetAdditionalEvidence(context.Context, *aa.GetAdditionalEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	return nil, unimpl("GetAdditionalEvidence")
}

func (s *aaService) BindInitData(context.Context, *aa.BindInitDataRequest) (*aa.BindInitDataResponse, error) {
	return nil, unimpl("BindInitData")
}
