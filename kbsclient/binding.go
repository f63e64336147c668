package kbsclient

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"hash"
)

// HashAlgorithm names a report_data hash the KBS may select.
type HashAlgorithm string

// Hash algorithms a KBS can name in "selected-hash-algorithm".
const (
	SHA256 HashAlgorithm = "sha256"
	SHA384 HashAlgorithm = "sha384" // Trustee's attestation service default
	SHA512 HashAlgorithm = "sha512"
)

func (h HashAlgorithm) new() (hash.Hash, error) {
	switch h {
	case SHA256:
		return sha256.New(), nil
	case SHA384:
		return sha512.New384(), nil
	case SHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unsupported hash algorithm %q", string(h))
}

// selectedHash reads the challenge's extra-params. Trustee sends the string
// ""; a KBS behind Intel Trust Authority may send an object naming the hash.
// Any other JSON is accepted and means the default, SHA-384.
func selectedHash(extra json.RawMessage) (HashAlgorithm, error) {
	var obj struct {
		Selected string `json:"selected-hash-algorithm"`
	}
	if len(bytes.TrimSpace(extra)) == 0 || extra[0] != '{' || json.Unmarshal(extra, &obj) != nil || obj.Selected == "" {
		return SHA384, nil
	}
	h := HashAlgorithm(obj.Selected)
	if _, err := h.new(); err != nil {
		return "", err
	}
	return h, nil
}

// canonicalRuntimeData serializes the report_data preimage per RFC 8785 (JCS):
// {"additional-evidence":…,"nonce":…,"tee-pubkey":…} with sorted keys, no
// whitespace and no HTML escaping. encoding/json sorts map keys, which makes
// this JCS for our inputs (strings only, no floats: spec "report_data binding").
func canonicalRuntimeData(nonce string, jwk map[string]string, additional string) ([]byte, error) {
	rd := map[string]any{
		"additional-evidence": additional,
		"nonce":               nonce,
		"tee-pubkey":          jwk,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rd); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ReportData returns H(JCS(runtime data)): the digest the attester must bind
// into its evidence (sample: as is; TDX/SNP: zero-padded to 64 bytes).
func ReportData(h HashAlgorithm, nonce string, jwk map[string]string, additional string) ([]byte, error) {
	canon, err := canonicalRuntimeData(nonce, jwk, additional)
	if err != nil {
		return nil, err
	}
	hh, err := h.new()
	if err != nil {
		return nil, err
	}
	hh.Write(canon)
	return hh.Sum(nil), nil
}
