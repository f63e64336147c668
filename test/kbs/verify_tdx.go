package kbs

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tdx-guest/verify"

	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
)

// verifyTDX checks a TDX quote as Trustee's verifier does, without network:
// PCK chain to a trusted root, QE report signed by the PCK, AK bound into the
// QE report, header+body signed by the AK (go-tdx-guest verify), then the
// report_data binding, with init-data MRCONFIGID, and a cc_eventlog's
// replay against RTMR0-3 (eventlog.go).
func verifyTDX(primary json.RawMessage, digest []byte, initDigest []byte, roots *x509.CertPool, now time.Time) (map[string]any, error) {
	if roots == nil {
		return nil, errors.New("no TDX trust anchors configured in the test KBS")
	}
	var ev struct {
		CCEventlog *string `json:"cc_eventlog"`
		Quote      *string `json:"quote"`
	}
	if err := json.Unmarshal(primary, &ev); err != nil || ev.Quote == nil {
		return nil, fmt.Errorf("tdx evidence is not {\"cc_eventlog\",\"quote\"}: %v", err)
	}
	quote, err := base64.StdEncoding.DecodeString(*ev.Quote)
	if err != nil {
		return nil, errors.New("tdx quote is not standard base64")
	}
	rd, err := tdx.ReportDataOf(quote)
	if err != nil {
		return nil, err
	}
	if err := verify.RawTdxQuote(quote, &verify.Options{TrustedRoots: roots, Now: now}); err != nil {
		return nil, fmt.Errorf("tdx quote signature chain: %w", err)
	}
	want := make([]byte, 64)
	copy(want, digest)
	if !bytes.Equal(rd, want) {
		return nil, errors.New("report_data does not match the runtime data binding")
	}
	if initDigest != nil {
		const mrConfigIDOffset = 48 + 184 // header, then body offset of MRCONFIGID (v4)
		want := make([]byte, 48)
		copy(want, initDigest) // sha256 zero-padded, sha384 exact, sha512 truncated
		if !bytes.Equal(quote[mrConfigIDOffset:mrConfigIDOffset+48], want) {
			return nil, errors.New("init-data digest does not match MRCONFIGID")
		}
	}
	claims := map[string]any{"report_data": fmt.Sprintf("%x", rd)}
	// A log is replayed against RTMR0-3 and any mismatch fails
	// attestation; null or empty passes (Trustee only warns).
	if ev.CCEventlog != nil && *ev.CCEventlog != "" {
		raw, err := base64.StdEncoding.DecodeString(*ev.CCEventlog)
		if err != nil {
			return nil, errors.New("cc_eventlog is not standard base64")
		}
		events, err := parseCCEventLog(raw)
		if err != nil {
			return nil, fmt.Errorf("parse CC eventlog: %w", err)
		}
		body := 48 // header; a v5 quote adds its body descriptor
		if binary.LittleEndian.Uint16(quote) == 5 {
			body += 6
		}
		for i := range 4 {
			const rtmr0 = 328
			rtmr := quote[body+rtmr0+48*i : body+rtmr0+48*(i+1)]
			if got := replayCCEL(events, uint32(i+1)); !bytes.Equal(got, rtmr) {
				return nil, fmt.Errorf("eventlog does not replay to RTMR%d: calculated %x, quoted %x", i, got, rtmr)
			}
		}
		claims["uefi_event_logs"] = events
	}
	return claims, nil
}
