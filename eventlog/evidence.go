package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// Where the logs live in a guest.
const (
	// DefaultDir holds the event log and its write-ahead file; tmpfs, so
	// it lives exactly as long as the registers it mirrors.
	DefaultDir = "/run/attestation-agent"
	// LogName and WALName are guest-components' file names, kept so that
	// either implementation can take over the other's log.
	LogName = "eventlog"
	WALName = ".wal_event_entry"
	// CCELPath is the firmware's CC event log (ACPI CCEL table data),
	// which records what firmware, boot loader and kernel measured into
	// RTMR0-2.
	CCELPath = "/sys/firmware/acpi/tables/data/CCEL"
)

// header is guest-components' fixed log header for an AAEL without a
// CCEL: a TCG_PCR_EVENT (PCR 0, EV_NO_ACTION, zero SHA-1 digest) holding
// a spec-ID structure with an all-zero signature and two algorithms,
// SHA-384 (48 bytes) and SM3 (32 bytes).
var header = [69]byte{
	0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x0C, 0x00, 0x30, 0x00,
	0x12, 0x00, 0x20, 0x00, 0x00,
}

// endMarker ends the evidence log: what a verifier stops at.
var endMarker = [8]byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}

// errTruncated means a record runs past the end of the data.
var errTruncated = errors.New("record runs past the end of the log")

// walk returns where the TCG_PCR_EVENT2 records starting at off end: at
// an 8-byte word of all 0xFF or all 0x00 where a record would start (a
// CCEL table's unused space), or at the end of b. A record that does not
// fit returns its own offset and errTruncated.
func walk(b []byte, off int) (int, error) {
	n := uint64(len(b))
	for {
		at := uint64(off)
		if at == n {
			return off, nil
		}
		if at+8 <= n {
			w := binary.LittleEndian.Uint64(b[at:])
			if w == 0 || w == ^uint64(0) {
				return off, nil
			}
		}
		i := at + 8 // mr_index, event type
		if i+4 > n {
			return off, errTruncated
		}
		count := uint64(binary.LittleEndian.Uint32(b[i:]))
		i += 4
		for range count {
			if i+2 > n {
				return off, errTruncated
			}
			id := binary.LittleEndian.Uint16(b[i:])
			size, ok := digestSize(id)
			if !ok {
				return off, fmt.Errorf("record at byte %d: unknown digest algorithm 0x%04x", off, id)
			}
			i += 2 + uint64(size)
		}
		if i+4 > n {
			return off, errTruncated
		}
		i += 4 + uint64(binary.LittleEndian.Uint32(b[i:]))
		if i > n {
			return off, errTruncated
		}
		off = int(i)
	}
}

// trimCCEL cuts a CCEL table's data after its last record. The table
// starts with the spec-ID event (a TCG_PCR_EVENT, EV_NO_ACTION) and is
// padded to its full size.
func trimCCEL(ccel []byte) ([]byte, error) {
	const first = 4 + 4 + 20 // pcr, type, SHA-1 digest
	if len(ccel) < first+4 {
		return nil, errors.New("CCEL: shorter than its first event")
	}
	if t := binary.LittleEndian.Uint32(ccel[4:]); t != evNoAction {
		return nil, fmt.Errorf("CCEL: first event has type 0x%x, not the spec ID event (EV_NO_ACTION)", t)
	}
	off := uint64(first+4) + uint64(binary.LittleEndian.Uint32(ccel[first:]))
	if off > uint64(len(ccel)) {
		return nil, errors.New("CCEL: spec ID event runs past the end of the table")
	}
	end, err := walk(ccel, int(off))
	if err != nil {
		return nil, fmt.Errorf("CCEL: %w", err)
	}
	return ccel[:end], nil
}

// completeRecords cuts an AAEL after its last complete record: the log
// may be read while an entry is being appended to it.
func completeRecords(aael []byte) ([]byte, error) {
	end, err := walk(aael, 0)
	if err != nil && !errors.Is(err, errTruncated) {
		return nil, fmt.Errorf("event log: %w", err)
	}
	return aael[:end], nil
}

// Evidence builds the cc_eventlog bytes as guest-components builds them:
// the CCEL trimmed after its last record, or, without a CCEL, the fixed
// header; then the AAEL's records; then eight 0xFF bytes. nil means
// absent: with neither log the result is nil (sent as null).
func Evidence(ccel, aael []byte) ([]byte, error) {
	var out []byte
	if ccel != nil {
		t, err := trimCCEL(ccel)
		if err != nil {
			return nil, err
		}
		out = append(out, t...)
	}
	if aael != nil {
		a, err := completeRecords(aael)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = append(out, header[:]...)
		}
		out = append(out, a...)
	}
	if out == nil {
		return nil, nil
	}
	return append(out, endMarker[:]...), nil
}

// Source is where a TDX guest's evidence log comes from.
type Source struct {
	CCEL string // "" → CCELPath
	Dir  string // the AAEL's directory; "" → DefaultDir
	// Always sends the log even when no AAEL exists: the operator named
	// the CCEL (--tdx-eventlog), so a missing one is an error.
	Always bool
	Logger *slog.Logger // nil → discard
}

// Read returns cc_eventlog for the next evidence, or nil to send null.
//
// Trustee's TDX verifier replays a sent log against RTMR0-3 and fails on
// any mismatch, and a null log passes with a warning. So the log is sent
// when there is something to show (an AAEL exists, or the operator asked)
// and only with the firmware's CCEL: the header-only form would replay
// RTMR0-2 as zero and fail every attestation.
func (s Source) Read() ([]byte, error) {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := s.Dir
	if dir == "" {
		dir = DefaultDir
	}
	aael, err := os.ReadFile(filepath.Join(dir, LogName))
	switch {
	case errors.Is(err, os.ErrNotExist):
		aael = nil
		if !s.Always {
			return nil, nil
		}
	case err != nil:
		return nil, fmt.Errorf("event log: %w", err)
	case aael == nil:
		aael = []byte{}
	}
	ccelPath := s.CCEL
	if ccelPath == "" {
		ccelPath = CCELPath
	}
	ccel, err := os.ReadFile(ccelPath)
	if errors.Is(err, os.ErrNotExist) && !s.Always {
		log.Warn("runtime event log not sent: this guest has no firmware CCEL table, and without it Trustee replays RTMR0-2 as zero and fails attestation", "ccel", ccelPath)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("firmware event log: %w", err)
	}
	return Evidence(ccel, aael)
}

// Growth returns how far the event log in dir ("" → DefaultDir) has
// grown, in bytes: a token attested at one size has not seen the events
// written since. Any process can watch the log the AA writes.
func Growth(dir string) func() int64 {
	if dir == "" {
		dir = DefaultDir
	}
	name := filepath.Join(dir, LogName)
	return func() int64 {
		fi, err := os.Stat(name)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
}
