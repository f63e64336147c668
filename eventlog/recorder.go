package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// ErrNoAgent means no attestation agent listens where the CDH looks for
// one: guest-components' CDH then skips measuring its pulls.
var ErrNoAgent = errors.New("no attestation agent socket")

// Result is what a measurement request came to, as the AA API reports it
// (RuntimeMeasurementResult).
type Result int

// The results, in the AA API's numbering.
const (
	OK           Result = 0
	NotSupported Result = 1 // the TEE has no runtime measurement register
	NotEnabled   Result = 2 // aa.toml has enable_eventlog = false
)

func (r Result) String() string {
	switch r {
	case OK:
		return "OK"
	case NotSupported:
		return "NOT_SUPPORTED"
	case NotEnabled:
		return "NOT_ENABLED"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// Recorder answers measurement requests in guest-components' order: not
// enabled, then not supported, then the event is checked and extended.
// The zero value answers NotEnabled.
type Recorder struct {
	log         *Log
	unsupported error
	logger      *slog.Logger
}

// NewRecorder returns the Recorder of an enabled event log: log extends,
// or, when the TEE has no registers, unsupported says why and every
// request answers NotSupported.
func NewRecorder(log *Log, unsupported error, logger *slog.Logger) *Recorder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Recorder{log: log, unsupported: unsupported, logger: logger}
}

// Record measures ev into the register of pcr (nil: init_pcr). Bad
// events are *InvalidEventError, a pcr without a register ErrRegister.
func (r *Recorder) Record(ctx context.Context, ev Event, pcr *uint64) (Result, error) {
	switch {
	case r == nil || r.log == nil && r.unsupported == nil:
		return NotEnabled, nil
	case r.log == nil:
		r.logger.Warn("runtime measurement not recorded: not supported here", "domain", ev.Domain, "operation", ev.Operation, "reason", r.unsupported)
		return NotSupported, nil
	}
	reg, err := r.log.Extend(ctx, ev, pcr)
	if err != nil {
		return OK, err
	}
	r.logger.Info("runtime measurement recorded", "domain", ev.Domain, "operation", ev.Operation, "register", reg)
	return OK, nil
}

// MeasureFunc records an event: the process's own Recorder, or the
// attestation agent's over its socket.
type MeasureFunc func(ctx context.Context, ev Event) (Result, error)

// PullImageEvent is the event guest-components' CDH records after every
// image it pulls, content byte for byte as it writes it (one space after
// the comma; image references hold no characters JSON would escape).
func PullImageEvent(image, digest string) Event {
	return Event{
		Domain:    "github.com/confidential-containers",
		Operation: "PullImage",
		Content:   `{"image":"` + image + `", "digest":"` + digest + `"}`,
	}
}
