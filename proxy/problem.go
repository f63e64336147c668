package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"

	"encoding/json"
	"errors"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"net/http"

	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
)

// problem is an RFC 9457 body. KBSType/KBSDetail echo the KBS error body.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Resource  string `json:"resource,omitempty"`
	KBSType   string `json:"kbs_type,omitempty"`
	KBSDetail string `json:"kbs_detail,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// requestID returns the caller's X-Request-Id if it is short and plain,
// else a fresh random one: it ties a problem body to its log line.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 64 && strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == "" {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Errors the proxy itself raises.
var (
	errForbiddenPeer   = errors.New("only loopback clients may read secrets")
	errForbiddenOrigin = errors.New("browser requests (Origin or cross-site Sec-Fetch-Site) are refused: cross-site request protection")
	errForbiddenHost   = errors.New("the Host header must name a loopback address (DNS rebinding protection)")
	errMethod          = errors.New("method not allowed")
)

// classify is the one place an error becomes an HTTP status (design.md,
// "Errors"): 400 bad path · 403 denied · 404 missing · 502 garbage/JWE ·
// 503 KBS unreachable or attestation failed · 504 budget exceeded.
func classify(err error) problem {
	var p problem
	var kerr *kbsclient.Error
	var rerr *remoteError
	switch {
	case errors.Is(err, resource.ErrInvalidPath):
		p = problem{Type: "urn:cdh-proxy:bad-path", Status: http.StatusBadRequest}
	case errors.Is(err, resource.ErrUnsupportedPlugin), errors.Is(err, sealed.ErrUnsupported):
		p = problem{Type: "urn:cdh-proxy:unsupported", Status: http.StatusNotImplemented}
	case errors.Is(err, sealed.ErrMalformed):
		p = problem{Type: "urn:cdh-proxy:bad-sealed-secret", Status: http.StatusBadRequest}
	case errors.Is(err, sealed.ErrSignature):
		p = problem{Type: "urn:cdh-proxy:sealed-secret-signature", Status: http.StatusForbidden}
	case errors.Is(err, errForbiddenPeer), errors.Is(err, errForbiddenOrigin), errors.Is(err, errForbiddenHost):
		p = problem{Type: "urn:cdh-proxy:forbidden", Status: http.StatusForbidden}
	case errors.Is(err, errMethod):
		p = problem{Type: "urn:cdh-proxy:method-not-allowed", Status: http.StatusMethodNotAllowed}
	case errors.Is(err, context.DeadlineExceeded):
		p = problem{Type: "urn:cdh-proxy:timeout", Status: http.StatusGatewayTimeout}
		if errors.As(err, &kerr) { // the KBS failure that used up the budget
			p.KBSType, p.KBSDetail = kerr.KBSType, kerr.KBSDetail
		}
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this, but log lines want a status.
		p = problem{Type: "urn:cdh-proxy:canceled", Status: 499}
	case errors.As(err, &rerr):
		p = problem{Type: "urn:cdh-proxy:upstream", Status: rerr.status}
	case errors.As(err, &kerr):
		p.KBSType, p.KBSDetail = kerr.KBSType, kerr.KBSDetail
		switch kerr.Kind {
		case kbsclient.Denied:
			p.Type, p.Status = "urn:cdh-proxy:kbs-policy-denied", http.StatusForbidden
		case kbsclient.NotFound:
			p.Type, p.Status = "urn:cdh-proxy:kbs-not-found", http.StatusNotFound
		case kbsclient.PluginNotFound:
			p.Type, p.Status = "urn:cdh-proxy:kbs-plugin-not-found", http.StatusNotFound
		case kbsclient.ProtocolMismatch:
			p.Type, p.Status = "urn:cdh-proxy:kbs-protocol-mismatch", http.StatusServiceUnavailable
		case kbsclient.BadResponse:
			p.Type, p.Status = "urn:cdh-proxy:kbs-bad-response", http.StatusBadGateway
		case kbsclient.AttestationFailed:
			p.Type, p.Status = "urn:cdh-proxy:attestation-failed", http.StatusServiceUnavailable
		default:
			p.Type, p.Status = "urn:cdh-proxy:kbs-unavailable", http.StatusServiceUnavailable
		}
	default:
		p = problem{Type: "urn:cdh-proxy:internal", Status: http.StatusInternalServerError}
	}
	p.Title = http.StatusText(p.Status)
	if p.Status == 499 {
		p.Title = "Client Closed Request"
	}
	p.Detail = err.Error()
	return p
}

func writeProblem(w http.ResponseWriter, p problem) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// statusCodes is the ttrpc face of the same table: kata-agent and CDH
// clients branch on codes, and the cause goes in the message. The first
// entry for a code is the HTTP status it maps back to (api-server-rest
// forwarding a CDH answer).
var statusCodes = []struct {
	http int
	code codes.Code
}{
	{http.StatusBadRequest, codes.InvalidArgument},
	{http.StatusForbidden, codes.PermissionDenied},
	{http.StatusNotFound, codes.NotFound},
	{http.StatusNotImplemented, codes.Unimplemented},
	{http.StatusServiceUnavailable, codes.Unavailable},
	{http.StatusBadGateway, codes.Unavailable},
	{http.StatusGatewayTimeout, codes.DeadlineExceeded},
	{499, codes.Canceled},
}

func grpcCode(status int) codes.Code {
	for _, m := range statusCodes {
		if m.http == status {
			return m.code
		}
	}
	return codes.Internal
}

func httpStatus(code codes.Code) int {
	for _, m := range statusCodes {
		if m.code == code {
			return m.http
		}
	}
	return http.StatusInternalServerError
}

// toStatus converts err for a ttrpc answer.
func toStatus(err error) error {
	p := classify(err)
	msg := p.Detail
	if p.KBSType != "" {
		msg += " (KBS " + p.KBSType + ")"
	}
	return status.Error(grpcCode(p.Status), msg)
}

// remoteError carries a status decided by another cdh-proxy process (the
// api-server-rest personality forwarding to the CDH/AA sockets).
type remoteError struct {
	status int
	msg    string
}

func (e *remoteError) Error() string { return e.msg }

func unavailable(what string, err error) error {
	return &remoteError{status: http.StatusServiceUnavailable, msg: what + ": " + err.Error()}
}

// fromStatus maps a ttrpc status back to an HTTP status.
func fromStatus(err error) error {
	st, _ := status.FromError(err)
	return &remoteError{status: httpStatus(st.Code()), msg: st.Message()}
}
