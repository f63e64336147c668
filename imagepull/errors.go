package imagepull

import (
	"context"
	"errors"
	"syscall"
)

// Code says what kind of failure a pull or unwrap met; the ttrpc front end
// turns it into a status code.
type Code int

const (
	CodeInternal    Code = iota // a fault of cdh-proxy or the guest
	CodeInvalid                 // a malformed request, reference, packet or config
	CodeUnsupported             // well-formed but not something cdh-proxy does
	CodeDenied                  // policy rejected the image, a registry is blocked, a key does not fit
	CodeNotFound                // no such image or tag
	CodeExhausted               // the disk under work_dir or the bundle is full
	CodeUnavailable             // the registry (or a mirror) could not be reached
	CodeFromFetch               // a KBS resource fetch failed: Err is classified by core
	CodeDeadline                // the caller's deadline passed
)

// Error is a pull or unwrap failure. Msg is short and safe for kata's
// events: it names images, registries and kids, never secrets.
type Error struct {
	Code Code
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// noSpace reports a full disk or an exhausted quota.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// classify gives an untyped error from a library its code; typed errors
// keep theirs.
func classify(msg string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case errors.As(err, &e):
		if msg == "" {
			return err
		}
		return &Error{Code: e.Code, Msg: msg + ": " + e.Msg, Err: e.Err}
	case noSpace(err):
		return &Error{Code: CodeExhausted, Msg: msg + ": no space left under the image work_dir or bundle", Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeDeadline, Msg: msg + ": deadline exceeded", Err: err}
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeDeadline, Msg: msg + ": cancelled", Err: err}
	}
	return &Error{Code: CodeInternal, Msg: msg, Err: err}
}
