package sealed

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
)

// Seal produces a signed sealed secret, as guest-components' secret CLI
// does: header {"b64":true,"alg":"ES256","kid":kid}. Used by tests and tools.
func Seal(s Secret, kid string, key *ecdsa.PrivateKey) (string, error) {
	hdr, err := json.Marshal(map[string]any{"b64": true, "alg": "ES256", "kid": kid})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding.EncodeToString
	signing := enc(hdr) + "." + enc(payload)
	h := sha256.Sum256([]byte(signing))
	r, sv, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return "", err
	}
	sig := append(r.FillBytes(make([]byte, 32)), sv.FillBytes(make([]byte, 32))...)
	return Prefix + signing + "." + enc(sig), nil
}

// Vault returns a vault/kbs Secret pointing at a resource URI.
func Vault(resourceURI string) Secret {
	return Secret{Version: "0.1.0", Type: "vault", Provider: "kbs", Name: resourceURI,
		ProviderSettings: json.RawMessage("{}"), Annotations: json.RawMessage("{}")}
}
