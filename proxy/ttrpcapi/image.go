package ttrpcapi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/imagepull"
)

// imageService is api.ImagePullService and keyprovider.KeyProviderService.
type imageService struct {
	images  Images
	budget  time.Duration
	log     *slog.Logger
	measure eventlog.MeasureFunc
}

// MeasureTimeout bounds the measurement of a pull, as guest-components'
// CDH bounds its call to the AA.
const MeasureTimeout = 10 * time.Second

// PullImage runs under the caller's deadline alone (kata-agent sends
// agent.image_pull_timeout, 1200 s by default): a pull may rightly take
// far longer than a secret.
//
// Each pulled image is then recorded in the runtime event log, as
// guest-components' CDH does. A log that is off or a TEE without runtime
// registers is no error. A failed record fails the pull: a KBS policy
// that releases keys only to guests whose log shows the image would
// otherwise see a guest run an image it cannot account for.
func (s *imageService) PullImage(ctx context.Context, req *cdh.ImagePullRequest) (*cdh.ImagePullResponse, error) {
	dg, err := s.images.Pull(ctx, req.GetImageUrl(), req.GetBundlePath())
	if err != nil {
		return nil, imageStatus(err)
	}
	if err := s.measurePull(ctx, req.GetImageUrl(), dg); err != nil {
		// The pull fails, so it leaves nothing mounted.
		if rerr := s.images.Release(req.GetBundlePath()); rerr != nil {
			s.log.Error("an unmeasured image's rootfs could not be removed", "bundle", req.GetBundlePath(), "err", rerr)
		}
		return nil, err
	}
	return &cdh.ImagePullResponse{ManifestDigest: dg}, nil
}

func (s *imageService) measurePull(ctx context.Context, image, digest string) error {
	if s.measure == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, MeasureTimeout)
	defer cancel()
	res, err := s.measure(ctx, eventlog.PullImageEvent(image, digest))
	switch {
	case errors.Is(err, eventlog.ErrNoAgent):
		s.log.Debug("image pull not measured: no attestation agent", "image", image, "reason", err)
		return nil
	case err != nil:
		s.log.Error("image pull not measured: the pull fails", "image", image, "err", err)
		return status.Errorf(codes.Internal, "image %s was pulled but could not be measured into the runtime event log: %v", image, err)
	case res == eventlog.OK:
		s.log.Info("image pull measured", "image", image, "digest", digest)
	default:
		s.log.Warn("image pull not measured", "image", image, "result", res.String())
	}
	return nil
}

func (s *imageService) UnWrapKey(ctx context.Context, in *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, s.budget)
	defer cancel()
	out, err := s.images.UnwrapKey(ctx, in.GetKeyProviderKeyWrapProtocolInput())
	if err != nil {
		s.log.Warn("UnWrapKey failed", "err", err)
		return nil, imageStatus(err)
	}
	return &keyprovider.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

func (s *imageService) WrapKey(context.Context, *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, status.Error(codes.Unimplemented, "KeyProviderService.WrapKey: a guest only unwraps (images are encrypted off the guest)")
}

// imageStatus gives an image-pull or unwrap failure its ttrpc status. A
// KBS failure keeps core's code (a missing key is NotFound, a denied one
// PermissionDenied) and says which resource it was.
func imageStatus(err error) error {
	var e *imagepull.Error
	if !errors.As(err, &e) {
		return status.Error(codes.Internal, err.Error())
	}
	code := map[imagepull.Code]codes.Code{
		imagepull.CodeInvalid:     codes.InvalidArgument,
		imagepull.CodeUnsupported: codes.FailedPrecondition,
		imagepull.CodeDenied:      codes.PermissionDenied,
		imagepull.CodeNotFound:    codes.NotFound,
		imagepull.CodeExhausted:   codes.ResourceExhausted,
		imagepull.CodeUnavailable: codes.Unavailable,
		imagepull.CodeDeadline:    codes.DeadlineExceeded,
	}[e.Code]
	if e.Code == imagepull.CodeFromFetch {
		p := core.Classify(e.Err)
		return status.Error(core.GRPCCode(p.Status), e.Msg+": "+p.Detail)
	}
	if code == codes.OK {
		code = codes.Internal
	}
	return status.Error(code, e.Error())
}
