// Package tdx produces Intel TDX evidence for the KBS:
// {"cc_eventlog":<base64|null>,"quote":"<base64 of the raw TD quote>"} with
// report_data = the binding digest zero-padded to 64 bytes.
package tdx

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// Tee is the KBS tee name.
const Tee = "tdx"

// Provider gets a TD quote (v4 or v5, with its PCK certification data) for
// report data. Implementations: configfs-tsm, the /dev/tdx_guest ioctl, and
// test simulators.
type Provider interface {
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// Evidence is the primary evidence sent to the KBS.
type Evidence struct {
	CCEventlog *string `json:"cc_eventlog"` // null until there is a log to send (Options.EventLog)
	Quote      string  `json:"quote"`       // standard base64
}

// Attester is the TDX attester.
type Attester struct {
	p        Provider
	eventLog func() ([]byte, error)
	rtmr     attester.Registers
}

var (
	_ attester.Attester = (*Attester)(nil)
	_ attester.Measurer = (*Attester)(nil)
)

// Options are an Attester's optional parts.
type Options struct {
	// EventLog supplies the cc_eventlog bytes; nil (or nil bytes) sends
	// null, which the verifier always accepts (a log it cannot replay
	// against RTMR0-3 fails attestation).
	EventLog func() ([]byte, error)
	// RTMR are the runtime measurement registers; nil when the kernel
	// offers none (RuntimeRegisters says so).
	RTMR attester.Registers
}

// New returns an Attester over p.
func New(p Provider, o Options) *Attester {
	return &Attester{p: p, eventLog: o.EventLog, rtmr: o.RTMR}
}

// RuntimeRegisters implements attester.Measurer.
func (a *Attester) RuntimeRegisters() (attester.Registers, error) {
	if a.rtmr == nil {
		return nil, ErrNoRTMR
	}
	return a.rtmr, nil
}

// Tee implements attester.Attester.
func (*Attester) Tee() string { return Tee }

// Quote layout (Intel TDX DCAP quote v4/v5): a 48-byte header; v4 then has
// the 584-byte TD report body, v5 a 2-byte body type and 4-byte body size
// before it. report_data sits 520 bytes into the body in both.
const (
	headerSize       = 48
	bodyReportData   = 520
	teeTypeTDX       = 0x81
	minQuoteSize     = headerSize + 584
	v5BodyDescriptor = 6
)

// ReportDataOf returns the report_data in a raw quote after checking the
// header: version 4 or 5 and TEE type TDX (SGX quotes, v3, are rejected).
func ReportDataOf(quote []byte) ([]byte, error) {
	if len(quote) < minQuoteSize {
		return nil, fmt.Errorf("tdx quote: %d bytes, too short", len(quote))
	}
	version := binary.LittleEndian.Uint16(quote[0:2])
	if tee := binary.LittleEndian.Uint32(quote[4:8]); tee != teeTypeTDX {
		return nil, fmt.Errorf("tdx quote: TEE type 0x%x is not TDX", tee)
	}
	off := headerSize + bodyReportData
	switch version {
	case 4:
	case 5:
		off += v5BodyDescriptor
	default:
		return nil, fmt.Errorf("tdx quote: version %d not supported (want 4 or 5)", version)
	}
	if len(quote) < off+64 {
		return nil, errors.New("tdx quote: truncated body")
	}
	return quote[off : off+64], nil
}

// Evidence implements attester.Attester.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	var rd [64]byte
	if len(reportData) > len(rd) {
		return nil, attester.ErrReportDataTooLong
	}
	copy(rd[:], reportData) // zero-padded (spec "report_data binding")
	// The log must show exactly the events the quoted RTMRs hold, or the
	// verifier's replay fails; an event recorded while the quote is made
	// would land in one and not the other. So the log is read before and
	// after the quote, and the quote made again if it changed.
	for range maxLogRaces {
		before, err := a.readLog()
		if err != nil {
			return nil, err
		}
		quote, err := a.p.Quote(ctx, rd)
		if err != nil {
			return nil, fmt.Errorf("tdx quote: %w", err)
		}
		got, err := ReportDataOf(quote)
		if err != nil {
			return nil, err
		}
		if string(got) != string(rd[:]) {
			return nil, errors.New("tdx quote does not carry the requested report_data")
		}
		after, err := a.readLog()
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(before, after) {
			continue
		}
		ev := Evidence{Quote: base64.StdEncoding.EncodeToString(quote)}
		if after != nil {
			s := base64.StdEncoding.EncodeToString(after)
			ev.CCEventlog = &s
		}
		return json.Marshal(ev)
	}
	return nil, fmt.Errorf("tdx event log: runtime events kept being recorded while %d quotes were made", maxLogRaces)
}

// maxLogRaces bounds the quotes made while the event log changes.
const maxLogRaces = 3

func (a *Attester) readLog() ([]byte, error) {
	if a.eventLog == nil {
		return nil, nil
	}
	log, err := a.eventLog()
	if err != nil {
		return nil, fmt.Errorf("tdx event log: %w", err)
	}
	return log, nil
}
