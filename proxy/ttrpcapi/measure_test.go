package ttrpcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

// Every pulled image is measured with guest-components' exact event; a
// log that is off, a TEE without registers or no AA at all let the pull
// through, a failed record fails it.
func TestPullImageIsMeasured(t *testing.T) {
	var got []eventlog.Event
	var deadline time.Time
	result, failure := eventlog.OK, error(nil)
	measure := func(ctx context.Context, ev eventlog.Event) (eventlog.Result, error) {
		got = append(got, ev)
		deadline, _ = ctx.Deadline()
		return result, failure
	}
	images := &fakeImages{}
	c := serve(t, func(s *ttrpc.Server) error {
		return RegisterCDH(s, CDHConfig{Secrets: &fakeSecrets{}, Images: images, Measure: measure})
	})
	pc := cdh.NewImagePullServiceClient(c)
	ctx, cancel := context.WithTimeout(t.Context(), 1200*time.Second) // kata's pull deadline
	defer cancel()
	callerDeadline, _ := ctx.Deadline()
	pull := func() error {
		_, err := pc.PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: "ok", BundlePath: "/b"})
		return err
	}
	if err := pull(); err != nil {
		t.Fatal(err)
	}
	want := eventlog.Event{Domain: "github.com/confidential-containers", Operation: "PullImage", Content: `{"image":"ok", "digest":"sha256:abc"}`}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("measured %+v, want %+v", got, want)
	}
	// Bounded by its own 10 s, not the pull's 1200 s.
	if deadline.IsZero() || deadline.After(time.Now().Add(MeasureTimeout)) || !deadline.Before(callerDeadline.Add(-time.Hour/6)) {
		t.Errorf("measurement deadline %v, want at most %v from its start", deadline, MeasureTimeout)
	}
	for _, r := range []eventlog.Result{eventlog.NotEnabled, eventlog.NotSupported} {
		result = r
		if err := pull(); err != nil {
			t.Errorf("%v: %v", r, err)
		}
	}
	result, failure = eventlog.OK, fmt.Errorf("%w at /run/aa.sock", eventlog.ErrNoAgent)
	if err := pull(); err != nil {
		t.Errorf("no AA socket: %v", err)
	}
	if len(images.released) != 0 {
		t.Errorf("measured pulls released: %q", images.released)
	}
	failure = errors.New("RTMR write: input/output error")
	err := pull()
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "could not be measured") || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("failed record: %v", err)
	}
	// The pull failed: its rootfs is not left mounted.
	if len(images.released) != 1 || images.released[0] != "/b" {
		t.Errorf("released %q, want the failed pull's bundle", images.released)
	}
	// A failed pull is not measured.
	n := len(got)
	pc.PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: "denied", BundlePath: "/b"})
	if len(got) != n {
		t.Error("a failed pull was measured")
	}
}

// ExtendRuntimeMeasurement answers in upstream's order, checks the event,
// and extends the register the request names.
func TestExtendRuntimeMeasurement(t *testing.T) {
	rtmr := fakehw.RTMR{Dir: t.TempDir()}
	logDir := t.TempDir()
	l, err := eventlog.Open(t.Context(), eventlog.Config{Dir: logDir, InitPCR: 17, Registers: rtmr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	client := func(rec *eventlog.Recorder) aa.AttestationAgentServiceService {
		c := serve(t, func(s *ttrpc.Server) error {
			return RegisterAA(s, AAConfig{Tee: "tdx", Evidence: noEvidence, Token: noToken, Measure: rec})
		})
		return aa.NewAttestationAgentServiceClient(c)
	}
	ctx := t.Context()
	req := &aa.ExtendRuntimeMeasurementRequest{Domain: "example.com", Operation: "Deploy", Content: "x"}
	for name, tc := range map[string]struct {
		rec  *eventlog.Recorder
		want aa.RuntimeMeasurementResult
	}{
		"off":         {nil, aa.RuntimeMeasurementResult_NOT_ENABLED},
		"unsupported": {eventlog.NewRecorder(nil, errors.New("snp has none"), nil), aa.RuntimeMeasurementResult_NOT_SUPPORTED},
	} {
		// Upstream's order: these answer before the event is looked at.
		for _, r := range []*aa.ExtendRuntimeMeasurementRequest{req, {}} {
			if res, err := client(tc.rec).ExtendRuntimeMeasurement(ctx, r); err != nil || res.GetResult() != tc.want {
				t.Errorf("%s: %v %v, want %v", name, res, err, tc.want)
			}
		}
	}
	a := client(eventlog.NewRecorder(l, nil, nil))
	if res, err := a.ExtendRuntimeMeasurement(ctx, req); err != nil || res.GetResult() != aa.RuntimeMeasurementResult_OK {
		t.Fatalf("extend: %v %v", res, err)
	}
	rtmr3, _ := rtmr.Read(ctx, 4)
	if bytes.Equal(rtmr3, make([]byte, 48)) {
		t.Error("RTMR3 not extended")
	}
	pcr8 := uint64(8)
	if _, err := a.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c", RegisterIndex: &pcr8}); err != nil {
		t.Fatal(err)
	}
	if rtmr2, _ := rtmr.Read(ctx, 3); bytes.Equal(rtmr2, make([]byte, 48)) {
		t.Error("RegisterIndex 8 did not extend RTMR2")
	}
	for name, r := range map[string]*aa.ExtendRuntimeMeasurementRequest{
		"empty domain":         {Operation: "o", Content: "c"},
		"space in operation":   {Domain: "d", Operation: "o p", Content: "c"},
		"newline in content":   {Domain: "d", Operation: "o", Content: "a\nb"},
		"control in operation": {Domain: "d", Operation: "o\x01", Content: "c"},
	} {
		_, err := a.ExtendRuntimeMeasurement(ctx, r)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "event ") {
			t.Errorf("%s: %v, want InvalidArgument with the reason", name, err)
		}
	}
	log, _ := os.ReadFile(filepath.Join(logDir, eventlog.LogName))
	if n := bytes.Count(log, []byte("LEAA")); n != 2 {
		t.Errorf("%d events logged, want the 2 good ones", n)
	}
}

func noEvidence(context.Context, []byte) (json.RawMessage, error) { return nil, errors.New("unused") }
func noToken(context.Context) (string, []byte, error)             { return "", nil, errors.New("unused") }
