package httpapi

import (
	"context"
	"encoding/base64"
	"net/http"

	"github.com/cdh-proxy/cdh-proxy/core"
)

// evidence serves GET /aa/evidence?runtime_data=<v>[&encoding=base64] as
// api-server-rest does (spec guest-compat.md): without encoding the bytes
// are the form-decoded UTF-8 of v; with encoding=base64 they are URL-safe
// base64 without padding. They are bound raw (not hashed).
func (h *handler) evidence(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("runtime_data") {
		writeProblem(w, core.BadRequest("runtime_data query parameter is required"))
		return
	}
	data := []byte(q.Get("runtime_data"))
	switch enc := q.Get("encoding"); enc {
	case "":
	case "base64":
		d, err := base64.RawURLEncoding.DecodeString(string(data))
		if err != nil {
			writeProblem(w, core.BadRequest("runtime_data is not URL-safe base64 without padding"))
			return
		}
		data = d
	default:
		writeProblem(w, core.BadRequest("encoding must be base64 or absent"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	ev, err := h.cfg.Evidence(ctx, data)
	if err != nil {
		h.fail(w, r, "evidence", core.ClassifyEvidence(err), "err", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(ev)
}

// featureOff answers routes whose --features group is disabled, as
// api-server-rest does, with 404.
func featureOff(feature string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeProblem(w, core.Problem{Type: "urn:cdh-proxy:feature-disabled", Title: "Not Found", Status: http.StatusNotFound,
			Detail: feature + " feature not enabled (start with --features " + feature + " or all)"})
	}
}

// token serves GET /aa/token?token_type=kbs: {"token","tee_keypair"}.
func (h *handler) token(w http.ResponseWriter, r *http.Request) {
	tt := r.URL.Query().Get("token_type")
	if tt == "" {
		writeProblem(w, core.BadRequest("token_type query parameter is required"))
		return
	}
	if tt != "kbs" {
		writeProblem(w, core.BadRequest("token_type must be kbs"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	b, err := core.TokenJSON(ctx, h.cfg.Token)
	if err != nil {
		h.fail(w, r, "token", core.Classify(err), "err", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}
