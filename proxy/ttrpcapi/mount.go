package ttrpcapi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/securemount"
)

// Mounts is what SecureMount calls (securemount.Service).
type Mounts interface {
	Mount(ctx context.Context, r securemount.Request) error
}

// maxMountTime bounds a SecureMount whose caller set no deadline (kata
// sets 50 s: agent.cdh_api_timeout).
const maxMountTime = 5 * time.Minute

type mountService struct {
	mounts Mounts
	log    *slog.Logger
}

func (m *mountService) SecureMount(ctx context.Context, req *cdh.SecureMountRequest) (*cdh.SecureMountResponse, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxMountTime)
		defer cancel()
	}
	// flags are ignored, as guest-components' block-device ignores them.
	err := m.mounts.Mount(ctx, securemount.Request{VolumeType: req.GetVolumeType(), Options: req.GetOptions(), MountPoint: req.GetMountPoint()})
	if err != nil {
		st := mountStatus(err)
		m.log.Warn("SecureMount failed", "volume_type", req.GetVolumeType(), "mount_point", req.GetMountPoint(), "code", st.Code().String(), "err", st.Message())
		return nil, st.Err()
	}
	return &cdh.SecureMountResponse{}, nil
}

// mountStatus gives a SecureMount failure its ttrpc status; a key that
// could not be fetched keeps core's code (a missing resource is NotFound).
func mountStatus(err error) *status.Status {
	var e *securemount.Error
	if !errors.As(err, &e) {
		p := core.Classify(err)
		return status.New(core.GRPCCode(p.Status), "SecureMount: "+err.Error())
	}
	code := map[securemount.Code]codes.Code{
		securemount.Internal:           codes.Internal,
		securemount.InvalidArgument:    codes.InvalidArgument,
		securemount.NotFound:           codes.NotFound,
		securemount.FailedPrecondition: codes.FailedPrecondition,
	}[e.Code]
	return status.New(code, "SecureMount: "+err.Error())
}
