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
	"github.com/cdh-proxy/cdh-proxy/imagepull"
)

// imageService is api.ImagePullService and keyprovider.KeyProviderService.
type imageService struct {
	images Images
	budget time.Duration
	log    *slog.Logger
}

// PullImage runs under the caller's deadline alone (kata-agent sends
// agent.image_pull_timeout, 1200 s by default): a pull may rightly take
// far longer than a secret.
func (s *imageService) PullImage(ctx context.Context, req *cdh.ImagePullRequest) (*cdh.ImagePullResponse, error) {
	dg, err := s.images.Pull(ctx, req.GetImageUrl(), req.GetBundlePath())
	if err != nil {
		return nil, imageStatus(err)
	}
	return &cdh.ImagePullResponse{ManifestDigest: dg}, nil
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
