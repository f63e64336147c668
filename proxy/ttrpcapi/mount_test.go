package ttrpcapi

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/sealed"
	"github.com/cdh-proxy/cdh-proxy/securemount"
)

type fakeMounts struct {
	got securemount.Request
	err error
}

func (f *fakeMounts) Mount(_ context.Context, r securemount.Request) error {
	f.got = r
	return f.err
}

// SecureMount over ttrpc: the request reaches the service as sent; each
// failure keeps its code (a key failure, core's); the reply is empty.
func TestSecureMountService(t *testing.T) {
	m := &fakeMounts{}
	srv, err := NewServer()
	if err != nil {
		t.Fatal(err)
	}
	if err := RegisterCDH(srv, CDHConfig{Secrets: nil, Mounts: m}); err == nil {
		t.Fatal("RegisterCDH without Secrets")
	}
	if err := RegisterCDH(srv, CDHConfig{Secrets: fakeSecretsForMount{}, Mounts: m}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	call := func() error {
		_, err := cdh.NewSecureMountServiceClient(c).SecureMount(context.Background(), &cdh.SecureMountRequest{
			VolumeType: "block-device", MountPoint: "/run/kata-containers/image/", Options: map[string]string{"deviceId": "254:0"}, Flags: []string{"x"}})
		return err
	}
	if err := call(); err != nil || m.got.VolumeType != "block-device" || m.got.MountPoint != "/run/kata-containers/image/" || m.got.Options["deviceId"] != "254:0" {
		t.Fatalf("%v %+v", err, m.got)
	}
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{&securemount.Error{Code: securemount.InvalidArgument, Msg: "bad"}, codes.InvalidArgument},
		{&securemount.Error{Code: securemount.NotFound, Msg: "no device"}, codes.NotFound},
		{&securemount.Error{Code: securemount.FailedPrecondition, Msg: "busy"}, codes.FailedPrecondition},
		{&securemount.Error{Code: securemount.Internal, Msg: "cryptsetup failed"}, codes.Internal},
		{fmt.Errorf("key: unseal the sealed secret: %w", sealed.ErrSignature), codes.PermissionDenied},
	} {
		m.err = c.err
		err := call()
		if status.Code(err) != c.code || !strings.Contains(err.Error(), "SecureMount: ") {
			t.Errorf("%v → %v, want %v", c.err, err, c.code)
		}
	}
}

type fakeSecretsForMount struct{}

func (fakeSecretsForMount) Fetch(context.Context, string) ([]byte, error)  { return nil, nil }
func (fakeSecretsForMount) Unseal(context.Context, string) ([]byte, error) { return nil, nil }
