package kbsclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"

	"github.com/go-jose/go-jose/v4"
)

// KeyAlgorithm selects the ephemeral TEE key the KBS encrypts resources to.
// The names are aa.toml's tee_key_algorithm values.
type KeyAlgorithm string

// Supported TEE key algorithms.
const (
	KeyEC256  KeyAlgorithm = "ECDH-ES+A256KW-P256" // default, as guest-components
	KeyEC521  KeyAlgorithm = "ECDH-ES+A256KW-P521"
	KeyRSA256 KeyAlgorithm = "RSA-OAEP-256"
)

// rsaBits is the guest-components default RSA key size.
const rsaBits = 2048

// ParseKeyAlgorithm accepts the aa.toml names plus the short forms used on
// the command line ("ec256", "p256", "p521", "rsa").
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	switch s {
	case "", string(KeyEC256), "ec256", "p256", "P-256", "ECDH-ES+A256KW":
		return KeyEC256, nil
	case string(KeyEC521), "ec521", "p521", "P-521":
		return KeyEC521, nil
	case string(KeyRSA256), "rsa", "rsa2048":
		return KeyRSA256, nil
	}
	return "", fmt.Errorf("unknown TEE key algorithm %q (want %s, %s or %s)", s, KeyEC256, KeyEC521, KeyRSA256)
}

// teeKey is one ephemeral key pair, generated per handshake. It is never
// logged: String and LogValue redact it.
type teeKey struct {
	alg  KeyAlgorithm
	priv crypto.PrivateKey // *ecdsa.PrivateKey or *rsa.PrivateKey
	jwk  map[string]string // exactly the typed members the KBS re-serializes
	jwe  jose.KeyAlgorithm // the only JWE alg we accept for this key
}

func (k *teeKey) String() string { return "[REDACTED TEE key " + string(k.alg) + "]" }

func newTEEKey(alg KeyAlgorithm) (*teeKey, error) {
	switch alg {
	case KeyEC256, KeyEC521:
		curve, size, crv := elliptic.P256(), 32, "P-256"
		if alg == KeyEC521 {
			curve, size, crv = elliptic.P521(), 66, "P-521"
		}
		priv, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate EC key: %w", err)
		}
		return &teeKey{alg: alg, priv: priv, jwe: jose.ECDH_ES_A256KW, jwk: map[string]string{
			"kty": "EC",
			"crv": crv,
			"alg": string(jose.ECDH_ES_A256KW),
			"x":   b64(priv.X.FillBytes(make([]byte, size))), // left-padded: spec "tee-pubkey"
			"y":   b64(priv.Y.FillBytes(make([]byte, size))),
		}}, nil
	case KeyRSA256:
		priv, err := rsa.GenerateKey(rand.Reader, rsaBits)
		if err != nil {
			return nil, fmt.Errorf("generate RSA key: %w", err)
		}
		return &teeKey{alg: alg, priv: priv, jwe: jose.RSA_OAEP_256, jwk: map[string]string{
			"kty": "RSA",
			"alg": string(jose.RSA_OAEP_256),
			"n":   b64(priv.N.Bytes()),
			"e":   b64(big.NewInt(int64(priv.E)).Bytes()),
		}}, nil
	}
	return nil, fmt.Errorf("unknown TEE key algorithm %q", string(alg))
}

// b64 is base64url without padding: every JWK value must be in this form, or
// the KBS fails the resource GET with JweError (spec "tee-pubkey").
func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// privatePEM encodes the key the way guest-components' /aa/token does:
// PKCS#8 "PRIVATE KEY" for EC, PKCS#1 "RSA PRIVATE KEY" for RSA.
func (k *teeKey) privatePEM() ([]byte, error) {
	switch priv := k.priv.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)}), nil
	default:
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
}
