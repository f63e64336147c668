package core

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
)

// Problem is the classification of a failure: an RFC 9457 body for HTTP,
// whose Status maps to a gRPC code for ttrpc. KBSType/KBSDetail echo the
// KBS error body.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Resource  string `json:"resource,omitempty"`
	KBSType   string `json:"kbs_type,omitempty"`
	KBSDetail string `json:"kbs_detail,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// Errors the front ends raise about a caller.
var (
	ErrForbiddenPeer   = errors.New("only loopback clients may read secrets")
	ErrForbiddenOrigin = errors.New("browser requests (Origin or cross-site Sec-Fetch-Site) are refused: cross-site request protection")
	ErrForbiddenHost   = errors.New("the Host header must name a loopback address (DNS rebinding protection)")
	ErrMethod          = errors.New("method not allowed")
)

// Classify is the one place an error becomes a status (design.md,
// "Errors"): 400 bad path · 403 denied · 404 missing · 502 garbage/JWE ·
// 503 KBS unreachable or attestation failed · 504 budget exceeded.
func Classify(err error) Problem {
	var p Problem
	var kerr *kbsclient.Error
	var rerr *RemoteError
	switch {
	case errors.Is(err, resource.ErrInvalidPath):
		p = Problem{Type: "urn:cdh-proxy:bad-path", Status: http.StatusBadRequest}
	case errors.Is(err, resource.ErrUnsupportedPlugin), errors.Is(err, sealed.ErrUnsupported):
		p = Problem{Type: "urn:cdh-proxy:unsupported", Status: http.StatusNotImplemented}
	case errors.Is(err, sealed.ErrMalformed):
		p = Problem{Type: "urn:cdh-proxy:bad-sealed-secret", Status: http.StatusBadRequest}
	case errors.Is(err, sealed.ErrSignature):
		p = Problem{Type: "urn:cdh-proxy:sealed-secret-signature", Status: http.StatusForbidden}
	case errors.Is(err, ErrForbiddenPeer), errors.Is(err, ErrForbiddenOrigin), errors.Is(err, ErrForbiddenHost):
		p = Problem{Type: "urn:cdh-proxy:forbidden", Status: http.StatusForbidden}
	case errors.Is(err, ErrMethod):
		p = Problem{Type: "urn:cdh-proxy:method-not-allowed", Status: http.StatusMethodNotAllowed}
	case errors.Is(err, context.DeadlineExceeded):
		p = Problem{Type: "urn:cdh-proxy:timeout", Status: http.StatusGatewayTimeout}
		if errors.As(err, &kerr) { // the KBS failure that used up the budget
			p.KBSType, p.KBSDetail = kerr.KBSType, kerr.KBSDetail
		}
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this, but log lines want a status.
		p = Problem{Type: "urn:cdh-proxy:canceled", Status: 499}
	case errors.As(err, &rerr):
		p = Problem{Type: "urn:cdh-proxy:upstream", Status: rerr.Status}
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
		p = Problem{Type: "urn:cdh-proxy:internal", Status: http.StatusInternalServerError}
	}
	p.Title = http.StatusText(p.Status)
	if p.Status == 499 {
		p.Title = "Client Closed Request"
	}
	p.Detail = err.Error()
	return p
}

// ClassifyEvidence is Classify for an attester failure: too much runtime
// data is the caller's fault; anything else unclassified is the hardware
// being unavailable.
func ClassifyEvidence(err error) Problem {
	if errors.Is(err, attester.ErrReportDataTooLong) {
		return BadRequest(err.Error())
	}
	p := Classify(err)
	if p.Status == http.StatusInternalServerError {
		p = Problem{Type: "urn:cdh-proxy:evidence-failed", Title: "Service Unavailable", Status: http.StatusServiceUnavailable, Detail: "evidence: " + err.Error()}
	}
	return p
}

// BadRequest is the problem for a malformed request.
func BadRequest(detail string) Problem {
	return Problem{Type: "urn:cdh-proxy:bad-request", Title: "Bad Request", Status: http.StatusBadRequest, Detail: detail}
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

// GRPCCode is the gRPC code for an HTTP status.
func GRPCCode(status int) codes.Code {
	for _, m := range statusCodes {
		if m.http == status {
			return m.code
		}
	}
	return codes.Internal
}

// HTTPStatus is the HTTP status for a gRPC code.
func HTTPStatus(code codes.Code) int {
	for _, m := range statusCodes {
		if m.code == code {
			return m.http
		}
	}
	return http.StatusInternalServerError
}

// GRPC converts a problem for a ttrpc answer; the KBS's error type rides
// in the message.
func (p Problem) GRPC() error {
	msg := p.Detail
	if p.KBSType != "" {
		msg += " (KBS " + p.KBSType + ")"
	}
	return status.Error(GRPCCode(p.Status), msg)
}

// RemoteError carries a status decided by another cdh-proxy process (the
// api-server-rest personality forwarding to the CDH/AA sockets).
type RemoteError struct {
	Status int
	Msg    string
}

func (e *RemoteError) Error() string { return e.Msg }

// Unreachable is the RemoteError for a daemon that cannot be reached.
func Unreachable(what string, err error) error {
	return &RemoteError{Status: http.StatusServiceUnavailable, Msg: what + ": " + err.Error()}
}

// FromStatus maps a ttrpc status back to an HTTP status.
func FromStatus(err error) error {
	st, _ := status.FromError(err)
	return &RemoteError{Status: HTTPStatus(st.Code()), Msg: st.Message()}
}
