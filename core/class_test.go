package core

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"bad path", resource.ErrInvalidPath, 400},
		{"denied", &kbsclient.Error{Kind: kbsclient.Denied}, 403},
		{"not found", &kbsclient.Error{Kind: kbsclient.NotFound}, 404},
		{"bad response", &kbsclient.Error{Kind: kbsclient.BadResponse}, 502},
		{"unavailable", &kbsclient.Error{Kind: kbsclient.Unavailable}, 503},
		{"attestation failed", &kbsclient.Error{Kind: kbsclient.AttestationFailed}, 503},
		{"deadline", context.DeadlineExceeded, 504},
		{"wrapped deadline", errors.Join(errors.New("x"), context.DeadlineExceeded), 504},
		{"unknown", errors.New("boom"), 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p := Classify(tt.err); p.Status != tt.want || p.Title == "" || p.Type == "" {
				t.Fatalf("Classify(%v) = %+v, want status %d", tt.err, p, tt.want)
			}
		})
	}
}

func TestStatusCodeTable(t *testing.T) {
	for _, tt := range []struct {
		status int
		code   codes.Code
		back   int
	}{
		{400, codes.InvalidArgument, 400}, {403, codes.PermissionDenied, 403}, {404, codes.NotFound, 404},
		{501, codes.Unimplemented, 501}, {502, codes.Unavailable, 503}, {503, codes.Unavailable, 503},
		{504, codes.DeadlineExceeded, 504}, {499, codes.Canceled, 499}, {500, codes.Internal, 500},
	} {
		if got := GRPCCode(tt.status); got != tt.code {
			t.Errorf("GRPCCode(%d) = %v, want %v", tt.status, got, tt.code)
		}
		if got := HTTPStatus(tt.code); got != tt.back {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tt.code, got, tt.back)
		}
	}
}

func TestProtocolMismatchProblem(t *testing.T) {
	err := &kbsclient.Error{Kind: kbsclient.ProtocolMismatch, Op: "auth", Status: 401, KBSType: "AttestationError",
		Msg: `cdh-proxy speaks KBS protocol 0.4.0; the KBS answered "… Version Mismatch …"`}
	p := Classify(err)
	if p.Type != "urn:cdh-proxy:kbs-protocol-mismatch" || p.Status != http.StatusServiceUnavailable {
		t.Fatalf("%+v", p)
	}
}

func TestClassifyMore(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
		typ  string
	}{
		{&kbsclient.Error{Kind: kbsclient.PluginNotFound}, 404, "urn:cdh-proxy:kbs-plugin-not-found"},
		{resource.ErrUnsupportedPlugin, 501, "urn:cdh-proxy:unsupported"},
		{sealed.ErrMalformed, 400, "urn:cdh-proxy:bad-sealed-secret"},
		{sealed.ErrSignature, 403, "urn:cdh-proxy:sealed-secret-signature"},
		{ErrForbiddenHost, 403, "urn:cdh-proxy:forbidden"},
		{ErrMethod, 405, "urn:cdh-proxy:method-not-allowed"},
		{context.Canceled, 499, "urn:cdh-proxy:canceled"},
		{&RemoteError{Status: 404, Msg: "x"}, 404, "urn:cdh-proxy:upstream"},
		{Unreachable("CDH socket", errors.New("refused")), 503, "urn:cdh-proxy:upstream"},
	} {
		if p := Classify(tt.err); p.Status != tt.want || p.Type != tt.typ {
			t.Errorf("Classify(%v) = %+v, want %d %s", tt.err, p, tt.want, tt.typ)
		}
	}
	if p := Classify(errors.New("x")); p.Title != "Internal Server Error" {
		t.Errorf("title %q", p.Title)
	}
	if p := Classify(context.Canceled); p.Title != "Client Closed Request" {
		t.Errorf("499 title %q", p.Title)
	}
}

func TestClassifyEvidence(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
		code codes.Code
	}{
		{attester.ErrReportDataTooLong, 400, codes.InvalidArgument},
		{context.DeadlineExceeded, 504, codes.DeadlineExceeded},
		{errors.New("no device"), 503, codes.Unavailable},
	} {
		p := ClassifyEvidence(tt.err)
		if p.Status != tt.want || status.Code(p.GRPC()) != tt.code {
			t.Errorf("ClassifyEvidence(%v) = %+v / %v", tt.err, p, status.Code(p.GRPC()))
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	p := Classify(&kbsclient.Error{Kind: kbsclient.Denied, KBSType: "PolicyDeny", Msg: "no"})
	err := p.GRPC()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "(KBS PolicyDeny)") {
		t.Fatalf("%v", err)
	}
	back := Classify(FromStatus(err))
	if back.Status != 403 || back.Type != "urn:cdh-proxy:upstream" {
		t.Fatalf("%+v", back)
	}
}

func TestTokenJSONRoundTrip(t *testing.T) {
	b, err := TokenJSON(context.Background(), func(context.Context) (string, []byte, error) { return "tok", []byte("PEM"), nil })
	if err != nil || string(b) != `{"token":"tok","tee_keypair":"PEM"}` {
		t.Fatalf("%s %v", b, err)
	}
	tok, key, err := ParseTokenJSON(b)
	if err != nil || tok != "tok" || string(key) != "PEM" {
		t.Fatalf("%q %q %v", tok, key, err)
	}
	if _, err := TokenJSON(context.Background(), func(context.Context) (string, []byte, error) { return "", nil, errors.New("down") }); err == nil {
		t.Fatal("token error lost")
	}
	if _, _, err := ParseTokenJSON([]byte("{")); err == nil {
		t.Fatal("bad JSON accepted")
	}
}
