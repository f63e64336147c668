package ttrpcapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/internal/unixsock"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
)

// fakeSecrets answers from a map; the errors are what core.Secrets returns.
type fakeSecrets struct{ deadline chan struct{} }

func (f *fakeSecrets) Fetch(ctx context.Context, uri string) ([]byte, error) {
	switch uri {
	case "kbs:///default/akv/coco_one":
		return []byte("a secret"), nil
	case "kbs+sample:///x":
		return []byte("sample plugin response"), nil
	case "kbs:///default/akv/nope":
		return nil, &kbsclient.Error{Kind: kbsclient.NotFound, KBSType: "PluginInternalError"}
	case "kbs:///slow/a/b":
		<-ctx.Done() // the budget ends
		return nil, ctx.Err()
	}
	return nil, resource.ErrInvalidPath
}

func (f *fakeSecrets) Unseal(_ context.Context, input string) ([]byte, error) {
	if input == "sealed.good" {
		return []byte("unsealed"), nil
	}
	return nil, sealed.ErrSignature
}

// serve runs register on a real unix socket until the test ends and
// returns a connected client, as kata-agent connects.
func serve(t *testing.T, register func(*ttrpc.Server) error) *ttrpc.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "tt") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uri := "unix://" + filepath.Join(dir, "sub", "api.sock")
	srv, err := NewServer()
	if err != nil {
		t.Fatal(err)
	}
	if err := register(srv); err != nil {
		t.Fatal(err)
	}
	ln, err := unixsock.Listen(uri)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, srv, time.Second) }()
	path, _ := unixsock.Path(uri)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left behind: %v", err)
		}
	})
	return c
}

func TestCDHServices(t *testing.T) {
	c := serve(t, func(s *ttrpc.Server) error {
		return RegisterCDH(s, CDHConfig{Secrets: &fakeSecrets{}, Budget: 200 * time.Millisecond})
	})
	ctx := context.Background()
	gr := cdh.NewGetResourceServiceClient(c)
	for _, tt := range []struct {
		uri  string
		want string
		code codes.Code
		msg  string
	}{
		{"kbs:///default/akv/coco_one", "a secret", codes.OK, ""},
		{"kbs+sample:///x", "sample plugin response", codes.OK, ""},
		{"kbs:///default/akv/nope", "", codes.NotFound, "(KBS PluginInternalError)"},
		{"kbs:///default/../x", "", codes.InvalidArgument, "invalid resource path"},
		{"kbs:///slow/a/b", "", codes.DeadlineExceeded, "deadline"},
	} {
		out, err := gr.GetResource(ctx, &cdh.GetResourceRequest{ResourcePath: tt.uri})
		if status.Code(err) != tt.code || string(out.GetResource()) != tt.want || (tt.msg != "" && !strings.Contains(err.Error(), tt.msg)) {
			t.Errorf("GetResource(%q) = %q, %v; want %q, %v mentioning %q", tt.uri, out.GetResource(), err, tt.want, tt.code, tt.msg)
		}
	}
	ss := cdh.NewSealedSecretServiceClient(c)
	if out, err := ss.UnsealSecret(ctx, &cdh.UnsealSecretInput{Secret: []byte("sealed.good")}); err != nil || string(out.GetPlaintext()) != "unsealed" {
		t.Fatalf("UnsealSecret: %q %v", out.GetPlaintext(), err)
	}
	if _, err := ss.UnsealSecret(ctx, &cdh.UnsealSecretInput{Secret: []byte("sealed.bad")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bad signature: %v", err)
	}
	// What cdh-proxy leaves to others answers at once, never hangs a pod start.
	for name, call := range map[string]func() error{
		"SecureMount": func() error {
			_, err := cdh.NewSecureMountServiceClient(c).SecureMount(ctx, &cdh.SecureMountRequest{})
			return err
		},
		"PullImage": func() error {
			_, err := cdh.NewImagePullServiceClient(c).PullImage(ctx, &cdh.ImagePullRequest{})
			return err
		},
		"WrapKey": func() error {
			_, err := keyprovider.NewKeyProviderServiceClient(c).WrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{})
			return err
		},
		"UnWrapKey": func() error {
			_, err := keyprovider.NewKeyProviderServiceClient(c).UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.Unimplemented {
			t.Errorf("%s: %v, want Unimplemented", name, err)
		}
	}
}

func TestAAService(t *testing.T) {
	evidence := func(_ context.Context, rd []byte) (json.RawMessage, error) {
		switch {
		case len(rd) > 64:
			return nil, attester.ErrReportDataTooLong
		case string(rd) == "broken":
			return nil, errors.New("device gone")
		}
		return json.RawMessage(`{"report_data":"` + string(rd) + `"}`), nil
	}
	tokenErr := false
	token := func(context.Context) (string, []byte, error) {
		if tokenErr {
			return "", nil, &kbsclient.Error{Kind: kbsclient.AttestationFailed}
		}
		return "tok", []byte("PEM"), nil
	}
	c := serve(t, func(s *ttrpc.Server) error {
		return RegisterAA(s, AAConfig{Tee: "tdx", Evidence: evidence, Token: token})
	})
	ctx := context.Background()
	a := aa.NewAttestationAgentServiceClient(c)
	if ev, err := a.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: []byte("hi")}); err != nil || string(ev.GetEvidence()) != `{"report_data":"hi"}` {
		t.Fatalf("GetEvidence: %s %v", ev.GetEvidence(), err)
	}
	if _, err := a.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: make([]byte, 65)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("too much runtime data: %v", err)
	}
	if _, err := a.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: []byte("broken")}); status.Code(err) != codes.Unavailable {
		t.Fatalf("hardware failure: %v", err)
	}
	if tok, err := a.GetToken(ctx, &aa.GetTokenRequest{TokenType: "kbs"}); err != nil || string(tok.GetToken()) != `{"token":"tok","tee_keypair":"PEM"}` {
		t.Fatalf("GetToken: %s %v", tok.GetToken(), err)
	}
	if _, err := a.GetToken(ctx, &aa.GetTokenRequest{TokenType: "coco_as"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("other token type: %v", err)
	}
	tokenErr = true
	if _, err := a.GetToken(ctx, &aa.GetTokenRequest{TokenType: "kbs"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("attestation failed: %v", err)
	}
	if tee, err := a.GetTeeType(ctx, &aa.GetTeeTypeRequest{}); err != nil || tee.GetTee() != "tdx" {
		t.Fatalf("GetTeeType: %v %v", tee, err)
	}
	if _, err := a.GetAdditionalTees(ctx, &aa.GetAdditionalTeesRequest{}); err != nil {
		t.Fatalf("GetAdditionalTees: %v", err)
	}
	if r, err := a.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{}); err != nil || r.GetResult() != aa.RuntimeMeasurementResult_NOT_ENABLED {
		t.Fatalf("ExtendRuntimeMeasurement: %v %v", r, err)
	}
	if _, err := a.GetAdditionalEvidence(ctx, &aa.GetAdditionalEvidenceRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("GetAdditionalEvidence: %v", err)
	}
	if _, err := a.BindInitData(ctx, &aa.BindInitDataRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("BindInitData: %v", err)
	}
}

func TestRegisterValidates(t *testing.T) {
	srv, err := NewServer()
	if err != nil {
		t.Fatal(err)
	}
	if err := RegisterCDH(srv, CDHConfig{}); err == nil {
		t.Error("CDH without Secrets accepted")
	}
	if err := RegisterAA(srv, AAConfig{Tee: "tdx"}); err == nil {
		t.Error("AA without Evidence and Token accepted")
	}
}
