package securemount

import (
	"errors"
	"fmt"
)

// Code classifies a failure for the caller (the CDH front end maps it to a
// ttrpc code). kata-agent treats any failure as fatal; the codes are for
// the people reading its log.
type Code int

const (
	Internal           Code = iota // a tool or system call failed: its message says which, with its stderr
	InvalidArgument                // the request's options are wrong
	NotFound                       // the device (or a file:// key) does not exist
	FailedPrecondition             // the device or mount point is in use, or the volume is not acceptable
)

func (c Code) String() string {
	return [...]string{"Internal", "InvalidArgument", "NotFound", "FailedPrecondition"}[c]
}

// Error is a SecureMount failure. Messages never carry key material.
type Error struct {
	Code Code
	Msg  string
	Err  error // the cause, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func invalid(format string, a ...any) error {
	return &Error{Code: InvalidArgument, Msg: fmt.Sprintf(format, a...)}
}

func failf(code Code, err error, format string, a ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...), Err: err}
}

// CodeOf is err's Code; Internal for errors of other kinds.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}
