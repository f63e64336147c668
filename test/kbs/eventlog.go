package kbs

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"
	"unicode/utf8"
)

// This file reads a TDX cc_eventlog as Trustee does (deps/eventlog and
// the tdx verifier), written from its behaviour and not from cdh-proxy's
// writer, so that the two check each other: the spec-ID event gives the
// digest sizes, TCG_PCR_EVENT2 records follow until a word of all 0xFF
// or all 0x00, unknown event types and algorithms fail, AAEL events must
// be UTF-8 with two spaces, and MR 1-4 must replay (SHA-384, from zero)
// to RTMR0-3 of the quote.

// ccEvent is one entry of the tdx.uefi_event_logs claim, with Trustee's
// JSON names.
type ccEvent struct {
	Index              uint32         `json:"index"`
	TypeName           string         `json:"type_name"`
	Digests            []ccDigest     `json:"digests"`
	Event              string         `json:"event"`
	DigestMatchesEvent bool           `json:"digest_matches_event"`
	Details            map[string]any `json:"details"`
}

type ccDigest struct {
	Alg    string `json:"alg"`
	Digest string `json:"digest"`
}

var tcgAlgs = map[uint16]struct {
	name string
	new  func() hash.Hash
}{
	0x000B: {"SHA-256", sha256.New},
	0x000C: {"SHA-384", sha512.New384},
	0x000D: {"SHA-512", sha512.New},
	0x0012: {"SM3", nil},
}

var tcgEventTypes = map[uint32]string{
	0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION",
	0x4: "EV_SEPARATOR", 0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS",
	0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE", 0xa: "EV_PLATFORM_CONFIG_FLAGS",
	0xb: "EV_TABLE_OF_DEVICES", 0xc: "EV_COMPACT_HASH", 0xd: "EV_IPL", 0xe: "EV_IPL_PARTITION_DATA",
	0xf: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO",
	0x12: "EV_OMIT_BOOT_DEVICE_EVENTS", 0x80000000: "EV_EFI_EVENT_BASE",
	0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT",
	0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION", 0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
	0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT",
	0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	0x80000009: "EV_EFI_HANDOFF_TABLES", 0x8000000a: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	0x8000000b: "EV_EFI_HANDOFF_TABLES2", 0x8000000c: "EV_EFI_VARIABLE_BOOT2",
	0x80000010: "EV_EFI_HCRTM_EVENT", 0x800000e0: "EV_EFI_VARIABLE_AUTHORITY",
	0x800000e1: "EV_EFI_SPDM_FIRMWARE_BLOB", 0x800000e2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

// logReader reads little-endian fields, failing past the end.
type logReader struct {
	b   []byte
	off int
	err error
}

func (r *logReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || r.off+n > len(r.b) || r.off+n < r.off {
		r.err = fmt.Errorf("event log: %d bytes wanted at offset %d of %d", n, r.off, len(r.b))
		return nil
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *logReader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

func (r *logReader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

// parseCCEventLog parses a cc_eventlog into Trustee's claim entries.
func parseCCEventLog(b []byte) ([]ccEvent, error) {
	r := &logReader{b: b}
	r.u32() // PCR
	if t := r.u32(); r.err == nil && t != 0x3 {
		return nil, fmt.Errorf("event log: first event type 0x%x is not the spec ID event", t)
	}
	r.take(20)
	spec := r.take(int(r.u32()))
	if r.err != nil {
		return nil, r.err
	}
	sizes := map[uint16]int{}
	sr := &logReader{b: spec, off: 24}
	for range sr.u32() {
		id, size := sr.u16(), sr.u16()
		if _, ok := tcgAlgs[id]; !ok && sr.err == nil {
			return nil, fmt.Errorf("event log: unknown algorithm 0x%x in the spec ID event", id)
		}
		sizes[id] = int(size)
	}
	vendor := sr.take(1)
	if vendor != nil {
		sr.take(int(vendor[0]))
	}
	if sr.err != nil || sr.off != len(spec) {
		return nil, fmt.Errorf("event log: malformed spec ID event (%v)", sr.err)
	}
	var out []ccEvent
	for r.off < len(b) {
		word := r.take(8)
		if r.err != nil {
			return nil, r.err // Trustee reads the stop word unconditionally
		}
		if w := binary.LittleEndian.Uint64(word); w == 0 || w == ^uint64(0) {
			break
		}
		r.off -= 8
		ev := ccEvent{Index: r.u32()}
		typ := r.u32()
		name, ok := tcgEventTypes[typ]
		if !ok && r.err == nil {
			return nil, fmt.Errorf("event log: unknown event type 0x%x", typ)
		}
		ev.TypeName = name
		var digests [][]byte
		var algs []uint16
		for range r.u32() {
			id := r.u16()
			size, ok := sizes[id]
			if !ok && r.err == nil {
				return nil, fmt.Errorf("event log: digest algorithm 0x%x not in the spec ID event", id)
			}
			d := r.take(size)
			digests, algs = append(digests, d), append(algs, id)
			ev.Digests = append(ev.Digests, ccDigest{Alg: tcgAlgs[id].name, Digest: hex.EncodeToString(d)})
		}
		data := r.take(int(r.u32()))
		if r.err != nil {
			return nil, r.err
		}
		ev.Event = base64.StdEncoding.EncodeToString(data)
		ev.DigestMatchesEvent = true
		for i, d := range digests {
			if h := tcgAlgs[algs[i]].new; h != nil {
				hh := h()
				hh.Write(data)
				ev.DigestMatchesEvent = ev.DigestMatchesEvent && bytes.Equal(hh.Sum(nil), d)
			}
		}
		if typ == 0x6 {
			details, err := eventTagDetails(data)
			if err != nil {
				return nil, err
			}
			ev.Details = details
		}
		out = append(out, ev)
	}
	return out, nil
}

// eventTagDetails is Trustee's EV_EVENT_TAG reading: an AAEL event is
// "domain operation content", content JSON when it parses.
func eventTagDetails(data []byte) (map[string]any, error) {
	r := &logReader{b: data}
	id := r.u32()
	text := r.take(int(r.u32()))
	if r.err != nil {
		return nil, fmt.Errorf("event tag: %w", r.err)
	}
	details := map[string]any{"string": strings.ReplaceAll(strings.ToValidUTF8(string(text), "\uFFFD"), "\x00", "")}
	if id != 0x4141454C {
		return details, nil
	}
	if !utf8.Valid(text) {
		return nil, errors.New("AAEL event: not UTF-8")
	}
	d, rest, ok1 := strings.Cut(string(text), " ")
	o, c, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return nil, errors.New("AAEL event: fewer than two spaces")
	}
	var content any = c
	var v any
	if json.Unmarshal([]byte(c), &v) == nil {
		content = v
	}
	details["unicode_name"] = "AAEL"
	details["data"] = map[string]any{"domain": d, "operation": o, "content": content}
	return details, nil
}

// replayCCEL folds the SHA-384 digests recorded for MR index, from zero.
func replayCCEL(events []ccEvent, index uint32) []byte {
	acc := make([]byte, 48)
	for _, e := range events {
		if e.Index != index {
			continue
		}
		for _, d := range e.Digests {
			if d.Alg != "SHA-384" {
				continue
			}
			raw, _ := hex.DecodeString(d.Digest)
			h := sha512.New384()
			h.Write(acc)
			h.Write(raw)
			acc = h.Sum(nil)
		}
	}
	return acc
}
