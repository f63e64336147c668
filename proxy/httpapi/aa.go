package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
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
	h.answer(w, "evidence", "application/octet-stream", ev)
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
	h.answer(w, "token", "application/octet-stream", b)
}

// reservedDomain is the domain of the guest's own components' events
// (the CDH's measured pulls): a workload must not be able to record an
// event a KBS policy takes for theirs (guest-components PR #1593).
const reservedDomain = "github.com/confidential-containers"

// aaelResults are api-server-rest's answers, word for word.
var aaelResults = map[eventlog.Result]string{
	eventlog.OK:           `{"success":"true"}`,
	eventlog.NotSupported: `{"success":"false","message": "The platform does not support runtime measurement"}`,
	eventlog.NotEnabled:   `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}`,
}

// aael serves POST /aa/aael {"domain","operation","content"}: a workload
// records an event in the runtime event log, as through api-server-rest.
func (h *handler) aael(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Domain    *string `json:"domain"`
		Operation *string `json:"operation"`
		Content   *string `json:"content"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAAELBody)).Decode(&body); err != nil ||
		body.Domain == nil || body.Operation == nil || body.Content == nil {
		writeProblem(w, core.BadRequest(`body must be {"domain","operation","content"}, all strings, at most 64 KiB`))
		return
	}
	ev := eventlog.Event{Domain: *body.Domain, Operation: *body.Operation, Content: *body.Content}
	if ev.Domain == reservedDomain || strings.HasPrefix(ev.Domain, reservedDomain+"/") {
		writeProblem(w, core.Problem{Type: "urn:cdh-proxy:reserved-domain", Title: "Forbidden", Status: http.StatusForbidden,
			Detail: "domain " + reservedDomain + " is the guest components' own (the CDH's measured pulls); a workload cannot record in it"})
		return
	}
	res := eventlog.NotEnabled
	if h.cfg.Measure != nil {
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
		defer cancel()
		var err error
		if res, err = h.cfg.Measure(ctx, ev); err != nil {
			var ie *eventlog.InvalidEventError
			switch {
			case errors.As(err, &ie), errors.Is(err, eventlog.ErrRegister):
				writeProblem(w, core.BadRequest(err.Error()))
			case errors.Is(err, eventlog.ErrNoAgent):
				h.fail(w, r, "aael", core.Classify(core.Unreachable("AA socket", err)), "err", err)
			default:
				h.fail(w, r, "aael", core.Classify(err), "err", err)
			}
			return
		}
	}
	msg, ok := aaelResults[res]
	if !ok {
		msg = `{"success":"false","message": "Unknown runtime measurement result"}`
	}
	h.answer(w, "aael", "application/json", []byte(msg))
}

// answer writes a 200 of an attestation route, never cached, and counts it.
func (h *handler) answer(w http.ResponseWriter, route, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
	h.cfg.Metrics.Count(route, http.StatusOK)
}

const maxAAELBody = 64 << 10
