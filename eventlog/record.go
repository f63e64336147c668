// Package eventlog is the attestation agent's runtime event log (AAEL):
// events that say what the guest did after boot (an image pulled, …),
// each extended into a runtime measurement register and recorded, in
// TCG2 form, in /run/attestation-agent/eventlog, so that a verifier can
// replay the log against the registers and put the events into the
// attestation claims (spec: runtime-measurement.md).
//
// record.go is the byte format, log.go the extend with its write-ahead
// file and crash recovery, evidence.go the cc_eventlog a TDX verifier
// replays.
package eventlog

import (
	"crypto"
	_ "crypto/sha256" // the register banks' hashes, for crypto.Hash.New
	_ "crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// TCG constants (TCG PC Client Platform Firmware Profile).
const (
	evNoAction = 0x3
	evEventTag = 0x6
	// tagAAEL is the TCG_PCClientTaggedEvent id "AAEL" (bytes 4c 45 41 41).
	tagAAEL = 0x4141454C
)

// algID is the TCG algorithm id of a digest in TCG_PCR_EVENT2.
func algID(h crypto.Hash) (uint16, error) {
	switch h {
	case crypto.SHA256:
		return 0x000B, nil
	case crypto.SHA384:
		return 0x000C, nil
	case crypto.SHA512:
		return 0x000D, nil
	}
	return 0, fmt.Errorf("eventlog: no TCG algorithm id for %v", h)
}

// digestSize is the digest size of a TCG algorithm id, as guest-components
// and Trustee know them (SM3 included, so a CSV log still walks).
func digestSize(id uint16) (int, bool) {
	switch id {
	case 0x000B, 0x0012:
		return 32, true
	case 0x000C:
		return 48, true
	case 0x000D:
		return 64, true
	}
	return 0, false
}

// Event is one runtime event. Its text, "domain operation content", is
// what is measured; a verifier splits it at the first two spaces.
type Event struct {
	Domain    string
	Operation string
	Content   string
}

// InvalidEventError says which field of an event is unusable and why.
type InvalidEventError struct {
	Field  string // domain, operation or content
	Reason string
}

func (e *InvalidEventError) Error() string {
	return fmt.Sprintf("event %s %s", e.Field, e.Reason)
}

// Validate checks what the verifier needs to read the event back: a
// domain and an operation that are non-empty and free of whitespace and
// control characters (the text is split at its first two spaces), and
// content free of control characters (a newline would also break the
// older line-based readers). guest-components' main checks only content's
// newline; these are the checks of its pending PR #1593.
func (e Event) Validate() error {
	for _, f := range []struct{ name, v string }{{"domain", e.Domain}, {"operation", e.Operation}} {
		if f.v == "" {
			return &InvalidEventError{f.name, "is empty"}
		}
		if !utf8.ValidString(f.v) {
			return &InvalidEventError{f.name, "is not UTF-8"}
		}
		if i := strings.IndexFunc(f.v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
			return &InvalidEventError{f.name, fmt.Sprintf("has whitespace or a control character (%U at byte %d)", []rune(f.v[i:])[0], i)}
		}
	}
	if !utf8.ValidString(e.Content) {
		return &InvalidEventError{"content", "is not UTF-8"}
	}
	if i := strings.IndexFunc(e.Content, unicode.IsControl); i >= 0 {
		return &InvalidEventError{"content", fmt.Sprintf("has a control character (%U at byte %d)", []rune(e.Content[i:])[0], i)}
	}
	return nil
}

// Text is what is measured: domain, operation and content joined by
// single spaces, with no newline.
func (e Event) Text() string { return e.Domain + " " + e.Operation + " " + e.Content }

// ParseText splits a measured text back into its event, as a verifier
// does: at the first two spaces.
func ParseText(t string) (Event, error) {
	d, rest, ok1 := strings.Cut(t, " ")
	o, c, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return Event{}, fmt.Errorf("event text %q has fewer than two spaces", t)
	}
	return Event{Domain: d, Operation: o, Content: c}, nil
}

// tagged is the TCG_PCClientTaggedEvent carrying text: tag id "AAEL",
// text length, text.
func tagged(text string) []byte {
	b := make([]byte, 8, 8+len(text))
	binary.LittleEndian.PutUint32(b[0:], tagAAEL)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(text)))
	return append(b, text...)
}

// Record is one event encoded for the log.
type Record struct {
	Entry  []byte // the TCG_PCR_EVENT2 bytes appended to the log
	Digest []byte // the digest extended into the register
}

// Encode builds the log entry of text for register reg (the log's
// mr_index) with hash h: TCG_PCR_EVENT2 {mr_index, EV_EVENT_TAG, one
// digest (alg, H(tagged event)), event size, tagged event}, all
// little-endian.
func Encode(reg uint32, h crypto.Hash, text string) (Record, error) {
	id, err := algID(h)
	if err != nil {
		return Record{}, err
	}
	ev := tagged(text)
	hh := h.New()
	hh.Write(ev)
	d := hh.Sum(nil)
	b := make([]byte, 0, 14+len(d)+4+len(ev))
	b = binary.LittleEndian.AppendUint32(b, reg)
	b = binary.LittleEndian.AppendUint32(b, evEventTag)
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint16(b, id)
	b = append(b, d...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ev)))
	b = append(b, ev...)
	return Record{Entry: b, Digest: d}, nil
}

// Fold is an extend: H(register ‖ digest).
func Fold(h crypto.Hash, register, digest []byte) []byte {
	hh := h.New()
	hh.Write(register)
	hh.Write(digest)
	return hh.Sum(nil)
}
