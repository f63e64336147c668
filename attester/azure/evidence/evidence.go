package evidence

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// KBS tee names.
const (
	TeeSNP = "az-snp-vtpm"
	TeeTDX = "az-tdx-vtpm"
)

// Evidence is the primary evidence of both tee types (version 2: Trustee ≥
// 0.21; version 1, the same shape, for Trustee 0.18–0.20). Exactly one of
// VCEK (SNP) and TDQuote (TDX) is set.
type Evidence struct {
	Version   int      `json:"version"`
	TPMQuote  TPMQuote `json:"tpm_quote"`
	HCLReport B64URL   `json:"hcl_report"`
	VCEK      B64URL   `json:"vcek,omitempty"`
	TDQuote   B64URL   `json:"td_quote,omitempty"`
}

// TPMQuote is a TPM2_Quote over SHA-256 PCRs 0–23.
type TPMQuote struct {
	Signature Hex   `json:"signature"` // raw RSASSA-PKCS1-v1.5 signature
	Message   Hex   `json:"message"`   // marshalled TPMS_ATTEST
	PCRs      []Hex `json:"pcrs"`      // PCR0…PCR23, SHA-256
}

// Hex is lowercase hex in JSON.
type Hex []byte

// MarshalJSON implements json.Marshaler.
func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON implements json.Unmarshaler; uppercase is refused, as the
// encoder never writes it.
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if strings.ToLower(s) != s {
		return errors.New("hex must be lowercase")
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("bad hex: %w", err)
	}
	*h = v
	return nil
}

// B64URL is URL-safe base64 with padding in JSON; the standard alphabet's
// '+' and '/' are refused.
type B64URL []byte

// MarshalJSON implements json.Marshaler.
func (b B64URL) MarshalJSON() ([]byte, error) {
	return json.Marshal(base64.URLEncoding.EncodeToString(b))
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *B64URL) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	v, err := base64.URLEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("not padded URL-safe base64: %w", err)
	}
	*b = v
	return nil
}

// ParseEvidence decodes evidence JSON and checks its shape for tee.
func ParseEvidence(tee string, data []byte) (*Evidence, error) {
	var ev Evidence
	if err := json.Unmarshal(data, &ev); err != nil {
		return nil, fmt.Errorf("%s evidence: %w", tee, err)
	}
	switch {
	case ev.Version != 1 && ev.Version != 2:
		return nil, fmt.Errorf("%s evidence version %d: want 1 or 2", tee, ev.Version)
	case len(ev.TPMQuote.PCRs) != 24:
		return nil, fmt.Errorf("%s evidence: %d PCRs, want 24 (SHA-256 PCR0–23)", tee, len(ev.TPMQuote.PCRs))
	case tee == TeeSNP && (len(ev.VCEK) == 0 || ev.TDQuote != nil):
		return nil, fmt.Errorf("%s evidence needs vcek and no td_quote", tee)
	case tee == TeeTDX && (len(ev.TDQuote) == 0 || ev.VCEK != nil):
		return nil, fmt.Errorf("%s evidence needs td_quote and no vcek", tee)
	case tee != TeeSNP && tee != TeeTDX:
		return nil, fmt.Errorf("unknown Azure tee %q", tee)
	}
	for i, p := range ev.TPMQuote.PCRs {
		if len(p) != 32 {
			return nil, fmt.Errorf("%s evidence: PCR%d is %d bytes, want 32", tee, i, len(p))
		}
	}
	return &ev, nil
}

// PCRDigest is SHA-256 over the concatenated PCR values, as in a quote.
func PCRDigest(pcrs [][]byte) []byte {
	h := sha256.New()
	for _, p := range pcrs {
		h.Write(p)
	}
	return h.Sum(nil)
}

// InitDataPCR8 is the PCR8 value after one extend with the init-data
// digest from a fresh boot: SHA-256(32 zero bytes ‖ digest).
func InitDataPCR8(digest []byte) []byte {
	h := sha256.New()
	h.Write(make([]byte, 32))
	h.Write(digest)
	return h.Sum(nil)
}
