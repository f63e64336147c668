package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

func newAAHandler(t *testing.T, ready bool, tokenErr error) http.Handler {
	t.Helper()
	c, err := cache.New(cache.Config{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{
		Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{}}, Features: core.Features{Resource: true, Attestation: true}, Ready: func() bool { return ready },
		Evidence: func(_ context.Context, rd []byte) (json.RawMessage, error) {
			switch {
			case len(rd) > 64:
				return nil, attester.ErrReportDataTooLong
			case string(rd) == "broken":
				return nil, errors.New("device gone")
			}
			return json.RawMessage(`{"rd":"` + string(rd) + `"}`), nil
		},
		Token: func(context.Context) (string, []byte, error) {
			if tokenErr != nil {
				return "", nil, tokenErr
			}
			return "tok", []byte("PEM"), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestAttestationRoutes(t *testing.T) {
	h := newAAHandler(t, true, nil)
	for _, tt := range []struct {
		target string
		status int
		body   string
	}{
		{"/aa/evidence?runtime_data=hello", 200, `{"rd":"hello"}`},
		{"/aa/evidence?runtime_data=aGk&encoding=base64", 200, `{"rd":"hi"}`},
		{"/aa/evidence?runtime_data=!!&encoding=base64", 400, "base64"},
		{"/aa/evidence?runtime_data=x&encoding=hex", 400, "encoding must be base64"},
		{"/aa/evidence", 400, "runtime_data query parameter is required"},
		{"/aa/evidence?runtime_data=" + strings.Repeat("a", 65), 400, "urn:cdh-proxy:bad-request"},
		{"/aa/evidence?runtime_data=broken", 503, "urn:cdh-proxy:evidence-failed"},
		{"/aa/token?token_type=kbs", 200, `{"token":"tok","tee_keypair":"PEM"}`},
		{"/aa/token", 400, "token_type query parameter is required"},
		{"/aa/token?token_type=coco_as", 400, "token_type must be kbs"},
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ready"},
		{"/nope", 404, "urn:cdh-proxy:not-found"},
	} {
		rec := serve(h, "127.0.0.1:1", tt.target)
		if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.body) {
			t.Errorf("%s: %d %s, want %d with %q", tt.target, rec.Code, rec.Body, tt.status, tt.body)
		}
	}
	if rec := serve(newAAHandler(t, false, &kbsclient.Error{Kind: kbsclient.AttestationFailed}), "127.0.0.1:1", "/aa/token?token_type=kbs"); rec.Code != 503 {
		t.Errorf("token failure: %d", rec.Code)
	}
	if rec := serve(newAAHandler(t, false, nil), "127.0.0.1:1", "/readyz"); rec.Code != 503 {
		t.Errorf("not ready: %d", rec.Code)
	}
}

func TestAttestationRoutesOffByDefault(t *testing.T) {
	h := newTestHandler(t, &fakeKBS{})
	for _, target := range []string{"/aa/evidence?runtime_data=x", "/aa/token?token_type=kbs"} {
		if rec := serve(h, "127.0.0.1:1", target); rec.Code != 404 || !strings.Contains(rec.Body.String(), "feature-disabled") {
			t.Errorf("%s: %d %s", target, rec.Code, rec.Body)
		}
	}
	if _, err := NewHandler(Config{Resources: &core.Secrets{}, Features: core.Features{Attestation: true}}); err == nil {
		t.Error("attestation feature without Evidence/Token accepted")
	}
	for in, want := range map[string]string{"": "resource", "resource": "resource", "attestation": "attestation", "all": "all"} {
		if f, err := core.ParseFeatures(in); err != nil || f.String() != want {
			t.Errorf("ParseFeatures(%q) = %v %v", in, f, err)
		}
	}
	if _, err := core.ParseFeatures("everything"); err == nil {
		t.Error("unknown feature accepted")
	}
	if _, err := NewHandler(Config{}); err == nil {
		t.Error("no Resources accepted")
	}
}

// Serve over a real listener: requests answered, then a drain on stop.
func TestServeDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inHandler, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, time.Second, 5*time.Second) }()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-inHandler
	cancel() // stop while a request is in flight
	close(release)
	if b := <-got; b != "finished" {
		t.Fatalf("in-flight request during drain: %q", b)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
