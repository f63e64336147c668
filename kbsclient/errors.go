package kbsclient

import (
	"errors"
	"fmt"
	"strings"
)

// Kind classifies a failure for callers that map it to a status.
type Kind int

// Failure kinds. proxy/problem.go is the one place they become statuses.
const (
	// Unavailable: the KBS could not be reached or answered 5xx.
	Unavailable Kind = iota + 1
	// AttestationFailed: the handshake was refused (bad evidence, version, policy on attest).
	AttestationFailed
	// Denied: the KBS resource policy denied access.
	Denied
	// NotFound: the resource is missing (or the KBS storage failed: the KBS cannot tell).
	NotFound
	// BadResponse: the KBS answered something we cannot use (garbage, bad JWE, no exp).
	BadResponse
	// PluginNotFound: the KBS has no such plugin enabled.
	PluginNotFound
	// ProtocolMismatch: the KBS refused our KBS protocol version.
	ProtocolMismatch
)

func (k Kind) String() string {
	switch k {
	case Unavailable:
		return "unavailable"
	case AttestationFailed:
		return "attestation failed"
	case Denied:
		return "denied"
	case NotFound:
		return "not found"
	case BadResponse:
		return "bad response"
	case PluginNotFound:
		return "plugin not found"
	case ProtocolMismatch:
		return "protocol version mismatch"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a classified KBS client failure. KBSType and KBSDetail echo the
// KBS error body when there was one (the KBS puts no secrets there); Msg is
// our own explanation.
type Error struct {
	Kind      Kind
	Op        string // "auth", "attest", "evidence", "resource", "plugin", "decrypt", …
	KBS       string // the endpoint that answered (scheme://host[:port]), "" when none was asked
	Status    int    // HTTP status from the KBS, 0 when none
	KBSType   string // short variant, e.g. "PolicyDeny"
	KBSDetail string // the KBS "detail" text
	Msg       string // what it means for the caller
	Err       error  // underlying cause, may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("kbs ")
	b.WriteString(e.Op)
	if e.KBS != "" {
		b.WriteString(" (")
		b.WriteString(e.KBS)
		b.WriteString(")")
	}
	b.WriteString(": ")
	if e.Msg != "" {
		b.WriteString(e.Msg)
	} else {
		b.WriteString(e.Kind.String())
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " [KBS HTTP %d", e.Status)
		if e.KBSType != "" {
			fmt.Fprintf(&b, " %s: %s", e.KBSType, e.KBSDetail)
		}
		b.WriteString("]")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// DeadlineError is the caller's context ending before the KBS answered
// for good. Last is the KBS failure seen before, if any: the reason the
// budget ran out. It matches both errors.Is(err, context.DeadlineExceeded)
// (or Canceled) and errors.As(err, **Error) when Last is set.
type DeadlineError struct {
	Err  error // ctx.Err()
	Last error // the last *Error of this call, nil when the KBS never answered
}

func (e *DeadlineError) Error() string {
	if e.Last == nil {
		return e.Err.Error()
	}
	return e.Err.Error() + "; last KBS failure: " + e.Last.Error()
}

func (e *DeadlineError) Unwrap() []error {
	if e.Last == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Last}
}

// KindOf returns the Kind of err, or 0 when err is not a *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// isTokenProblem reports whether a 401 means "your token is gone or bad":
// the only 401s after which re-attesting can help (spec "Errors").
func isTokenProblem(kbsType string) bool {
	return kbsType == TypeTokenNotFound || kbsType == TypeTokenVerifier
}
