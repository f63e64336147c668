package ttrpcapi

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/imagepull"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

// fakeImages answers by image name and records the deadline it saw.
type fakeImages struct {
	deadline time.Time
	bundle   string
	released []string
}

func (f *fakeImages) Release(bundle string) error {
	f.released = append(f.released, bundle)
	return nil
}

func (f *fakeImages) Pull(ctx context.Context, image, bundle string) (string, error) {
	f.deadline, _ = ctx.Deadline()
	f.bundle = bundle
	switch image {
	case "ok":
		return "sha256:abc", nil
	case "denied":
		return "", &imagepull.Error{Code: imagepull.CodeDenied, Msg: "image denied rejected by the image security policy"}
	case "full":
		return "", &imagepull.Error{Code: imagepull.CodeExhausted, Msg: "no space"}
	case "nokey":
		return "", &imagepull.Error{Code: imagepull.CodeFromFetch, Msg: "key kbs:///default/key/1",
			Err: &kbsclient.Error{Kind: kbsclient.NotFound}}
	case "deniedkey":
		return "", &imagepull.Error{Code: imagepull.CodeFromFetch, Msg: "key kbs:///default/key/2",
			Err: &kbsclient.Error{Kind: kbsclient.Denied}}
	case "missing":
		return "", &imagepull.Error{Code: imagepull.CodeNotFound, Msg: "not found"}
	case "bad":
		return "", &imagepull.Error{Code: imagepull.CodeInvalid, Msg: "bad reference"}
	case "unsupported":
		return "", &imagepull.Error{Code: imagepull.CodeUnsupported, Msg: "jwe layer"}
	case "down":
		return "", &imagepull.Error{Code: imagepull.CodeUnavailable, Msg: "registry"}
	case "late":
		return "", &imagepull.Error{Code: imagepull.CodeDeadline, Msg: "deadline"}
	}
	return "", errors.New("boom")
}

func (f *fakeImages) UnwrapKey(_ context.Context, in []byte) ([]byte, error) {
	if string(in) == "good" {
		return []byte(`{"keyunwrapresults":{"optsdata":"b3B0cw=="}}`), nil
	}
	return nil, &imagepull.Error{Code: imagepull.CodeInvalid, Msg: "key-provider input is not JSON"}
}

func TestImageServices(t *testing.T) {
	im := &fakeImages{}
	c := serve(t, func(s *ttrpc.Server) error {
		return RegisterCDH(s, CDHConfig{Secrets: &fakeSecrets{}, Images: im, Budget: time.Second})
	})
	pc := cdh.NewImagePullServiceClient(c)
	// kata-agent's deadline reaches the pull, not the 1 s budget of secrets.
	ctx, cancel := context.WithTimeout(t.Context(), 1200*time.Second)
	defer cancel()
	res, err := pc.PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: "ok", BundlePath: "/run/kata-containers/c1"})
	if err != nil || res.GetManifestDigest() != "sha256:abc" {
		t.Fatalf("PullImage: %v %v", res, err)
	}
	if im.bundle != "/run/kata-containers/c1" {
		t.Errorf("bundle %q", im.bundle)
	}
	if left := time.Until(im.deadline); left < 1000*time.Second {
		t.Errorf("pull ran with %v left, want the caller's 1200 s deadline", left)
	}
	for image, want := range map[string]codes.Code{
		"denied": codes.PermissionDenied, "full": codes.ResourceExhausted, "nokey": codes.NotFound,
		"deniedkey": codes.PermissionDenied, "missing": codes.NotFound, "bad": codes.InvalidArgument,
		"unsupported": codes.FailedPrecondition, "down": codes.Unavailable, "late": codes.DeadlineExceeded,
		"other": codes.Internal,
	} {
		_, err := pc.PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: image, BundlePath: "/b"})
		if status.Code(err) != want {
			t.Errorf("%s: %v, want %s", image, err, want)
		}
	}
	_, err = pc.PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: "nokey"})
	if !strings.Contains(status.Convert(err).Message(), "kbs:///default/key/1") {
		t.Errorf("missing key error does not name the kid: %v", err)
	}

	kp := keyprovider.NewKeyProviderServiceClient(c)
	out, err := kp.UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte("good")})
	if err != nil || !strings.Contains(string(out.GetKeyProviderKeyWrapProtocolOutput()), "optsdata") {
		t.Fatalf("UnWrapKey: %v %v", out, err)
	}
	if _, err := kp.UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte("{")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad input: %v", err)
	}
	if _, err := kp.WrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("WrapKey: %v", err)
	}
}
