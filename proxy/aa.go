package proxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// EvidenceFunc produces primary evidence for raw runtime data.
type EvidenceFunc func(ctx context.Context, runtimeData []byte) (json.RawMessage, error)

var errBadRuntimeData = errors.New("bad runtime_data")

// evidence serves GET /aa/evidence?runtime_data=<v>[&encoding=base64] as
// api-server-rest does (spec guest-compat.md): without encoding the bytes
// are the form-decoded UTF-8 of v; with encoding=base64 they are URL-safe
// base64 without padding. They are bound raw (not hashed).
func (h *handler) evidence(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("runtime_data") {
		writeProblem(w, badRequest("runtime_data query parameter is required"))
		return
	}
	data := []byte(q.Get("runtime_data"))
	switch enc := q.Get("encoding"); enc {
	case "":
	case "base64":
		d, err := base64.RawURLEncoding.DecodeString(string(data))
		if err != nil {
			writeProblem(w, badRequest("runtime_data is not URL-safe base64 without padding"))
			return
		}
		data = d
	default:
		writeProblem(w, badRequest("encoding must be base64 or absent"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	ev, err := h.cfg.Evidence(ctx, data)
	if err != nil {
		if errors.Is(err, attester.ErrReportDataTooLong) {
			writeProblem(w, badRequest(err.Error()))
			return
		}
		prob := classify(err)
		if prob.Status == http.StatusInternalServerError {
			prob = problem{Type: "urn:cdh-proxy:evidence-failed", Title: "Service Unavailable", Status: http.StatusServiceUnavailable, Detail: err.Error()}
		}
		h.fail(w, r, "evidence", prob, "err", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(ev)
}

func badRequest(detail string) problem {
	return problem{Type: "urn:cdh-proxy:bad-request", Title: "Bad Request", Status: http.StatusBadRequest, Detail: detail}
}

// featureOff answers routes whose --features group is disabled, as
// api-server-rest does, with 404.
func featureOff(feature string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeProblem(w, problem{Type: "urn:cdh-proxy:feature-disabled", Title: "Not Found", Status: http.StatusNotFound,
			Detail: feature + " feature not enabled (start with --features " + feature + " or all)"})
	}
}

// evidenceStatus maps an attester failure for ttrpc: too much runtime data is
// the caller's fault; anything else is the hardware being unavailable.
func evidenceStatus(err error) error {
	if errors.Is(err, attester.ErrReportDataTooLong) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, "evidence: "+err.Error())
}

// token serves GET /aa/token?token_type=kbs: {"token","tee_keypair"}.
func (h *handler) token(w http.ResponseWriter, r *http.Request) {
	tt := r.URL.Query().Get("token_type")
	if tt == "" {
		writeProblem(w, badRequest("token_type query parameter is required"))
		return
	}
	if tt != "kbs" {
		writeProblem(w, badRequest("token_type must be kbs"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	b, err := tokenJSON(ctx, h.cfg.Token)
	if err != nil {
		h.fail(w, r, "token", classify(err), "err", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}
