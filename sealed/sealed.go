// Package sealed parses and verifies Confidential Containers sealed secrets:
// "sealed." followed by a compact JWS whose payload points at a KBS resource
// (spec guest-compat.md, "Sealed secrets"). It does no I/O: the caller
// fetches the signing key and the secret.
package sealed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"path"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// Prefix marks a sealed secret.
const Prefix = "sealed."

// maxLen bounds the input: sealed secrets are small pointers, never payloads.
const maxLen = 64 << 10

// Errors callers branch on (to pick a status code).
var (
	// ErrMalformed: not a sealed secret, bad base64/JSON, missing fields.
	ErrMalformed = errors.New("malformed sealed secret")
	// ErrUnsupported: envelope secrets, or vault providers other than kbs.
	ErrUnsupported = errors.New("unsupported sealed secret")
	// ErrSignature: the JWS header or signature does not verify.
	ErrSignature = errors.New("sealed secret signature invalid")
)

// Secret is the JWS payload.
type Secret struct {
	Version          string          `json:"version"`
	Type             string          `json:"type"`
	Provider         string          `json:"provider"`
	Name             string          `json:"name"`
	ProviderSettings json.RawMessage `json:"provider_settings"`
	Annotations      json.RawMessage `json:"annotations"`
}

// Header is the JWS protected header.
type Header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// Sealed is a parsed sealed secret.
type Sealed struct {
	Header  Header // zero when parsed without verification
	Secret  Secret
	signing string // "<header>.<payload>", the JWS signing input
	sig     []byte
}

// Parse splits and decodes a sealed secret. With verify (the default
// upstream), the header must be a real ES256 header with a kid; without it
// the input only has to split into exactly four dot-separated parts, as old
// docs' "sealed.fakejwsheader.<payload>.fakesignature" does.
func Parse(input string, verify bool) (*Sealed, error) {
	if len(input) > maxLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxLen)
	}
	rest, ok := strings.CutPrefix(input, Prefix)
	if !ok {
		return nil, fmt.Errorf("%w: does not start with %q", ErrMalformed, Prefix)
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want sealed.<header>.<payload>.<signature>, got %d parts after the prefix", ErrMalformed, len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url without padding", ErrMalformed)
	}
	s := &Sealed{signing: parts[0] + "." + parts[1]}
	if verify {
		hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
		if err != nil {
			return nil, fmt.Errorf("%w: header is not base64url (a fake header needs skip_sealed_secret_verification)", ErrSignature)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(hdr, &raw); err != nil {
			return nil, fmt.Errorf("%w: header is not a JSON object (a fake header needs skip_sealed_secret_verification)", ErrSignature)
		}
		if err := json.Unmarshal(hdr, &s.Header); err != nil {
			return nil, fmt.Errorf("%w: header: %v", ErrSignature, err)
		}
		if s.Header.Alg != "ES256" {
			return nil, fmt.Errorf("%w: alg %q, want ES256", ErrSignature, s.Header.Alg)
		}
		if s.Header.Kid == "" {
			return nil, fmt.Errorf("%w: header has no kid", ErrSignature)
		}
		if b, ok := raw["b64"]; ok && string(b) != "true" {
			return nil, fmt.Errorf("%w: b64=%s is not supported", ErrSignature, b)
		}
		if s.sig, err = base64.RawURLEncoding.DecodeString(parts[2]); err != nil || len(s.sig) != 64 {
			return nil, fmt.Errorf("%w: signature is not 64 bytes of base64url", ErrSignature)
		}
	}
	if err := json.Unmarshal(payload, &s.Secret); err != nil {
		return nil, fmt.Errorf("%w: payload is not JSON: %v", ErrMalformed, err)
	}
	if err := s.Secret.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Secret) validate() error {
	if s.Version != "0.1.0" {
		return fmt.Errorf("%w: version %q, want 0.1.0", ErrMalformed, s.Version)
	}
	if s.ProviderSettings == nil || s.Annotations == nil {
		return fmt.Errorf("%w: provider_settings and annotations are required", ErrMalformed)
	}
	switch s.Type {
	case "vault":
	case "envelope":
		return fmt.Errorf("%w: envelope secrets need a cloud KMS client, which cdh-proxy does not have", ErrUnsupported)
	default:
		return fmt.Errorf("%w: type %q, want vault", ErrMalformed, s.Type)
	}
	if !strings.EqualFold(s.Provider, "kbs") {
		return fmt.Errorf("%w: vault provider %q (only kbs)", ErrUnsupported, s.Provider)
	}
	if s.Name == "" {
		return fmt.Errorf("%w: name is required", ErrMalformed)
	}
	return nil
}

// Verify checks the ES256 signature with a P-256 public JWK (extra members
// allowed): raw r ‖ s over the ASCII "<header>.<payload>".
func (s *Sealed) Verify(jwk []byte) error {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(jwk); err != nil {
		return fmt.Errorf("%w: signing key is not a JWK: %v", ErrSignature, err)
	}
	var pub *ecdsa.PublicKey
	switch key := k.Key.(type) {
	case *ecdsa.PublicKey:
		pub = key
	case *ecdsa.PrivateKey:
		pub = &key.PublicKey
	default:
		return fmt.Errorf("%w: signing key is %T, want an EC P-256 key", ErrSignature, k.Key)
	}
	if pub.Curve != elliptic.P256() {
		return fmt.Errorf("%w: signing key curve %s, want P-256", ErrSignature, pub.Curve.Params().Name)
	}
	h := sha256.Sum256([]byte(s.signing))
	r, sv := new(big.Int).SetBytes(s.sig[:32]), new(big.Int).SetBytes(s.sig[32:])
	if !ecdsa.Verify(pub, h[:], r, sv) {
		return fmt.Errorf("%w: signature does not match", ErrSignature)
	}
	return nil
}

// LocalKeyDir is where a bare-name kid is looked up.
const LocalKeyDir = "/run/confidential-containers/cdh/sealed-secret"

// KidFile maps a bare-name kid to its file under dir, refusing traversal.
// It reports false when kid is not a bare name (then it is a resource URI).
func KidFile(dir, kid string) (string, bool, error) {
	if strings.Contains(kid, "://") {
		return "", false, nil
	}
	if kid == "" || kid == "." || kid == ".." || strings.ContainsAny(kid, "/\\\x00") {
		return "", true, fmt.Errorf("%w: kid %q is not a resource URI or a plain file name", ErrSignature, kid)
	}
	return path.Join(dir, kid), true, nil
}
