package kbsclient

import (
	"crypto"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// FuzzDecryptInput feeds arbitrary KBS resource bodies to the JWE path:
// it must fail cleanly (never panic) and never accept what our key did not
// encrypt.
func FuzzDecryptInput(f *testing.F) {
	key, err := newTEEKey(KeyEC256)
	if err != nil {
		f.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: key.priv.(crypto.Signer).Public()}, nil)
	if err != nil {
		f.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte("a secret"))
	if err != nil {
		f.Fatal(err)
	}
	valid := obj.FullSerialize()
	f.Add([]byte(valid))
	f.Add([]byte(strings.Replace(valid, `"ciphertext":"`, `"ciphertext":"A`, 1)))
	f.Add([]byte(`{"protected":"eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0","iv":"","ciphertext":"","tag":""}`)) // alg "dir"
	f.Add([]byte(`{"protected":"e30"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		plain, err := key.decrypt(body)
		if err == nil && string(body) != valid && string(plain) != "a secret" {
			// Accepting a different serialization of the same JWE is fine; any
			// other plaintext means we decrypted something we should not have.
			t.Fatalf("decrypted unexpected plaintext %q", plain)
		}
	})
}

// FuzzClassify feeds arbitrary KBS error answers: every non-200 becomes a
// classified *Error, bounded and free of control characters.
func FuzzClassify(f *testing.F) {
	f.Add(401, []byte(`{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Access denied by policy"}`))
	f.Add(404, []byte(`{"type":"https://github.com/confidential-containers/kbs/errors/PluginNotFound","detail":"x"}`))
	f.Add(500, []byte(`garbage`))
	f.Add(401, []byte(`{"type":"https://github.com/confidential-containers/kbs/errors/X","detail":"a\nb\u0000"}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		for _, op := range []string{"auth", "attest", "resource"} {
			err := classify(op, status, body)
			e, ok := err.(*Error)
			if !ok || e.Kind == 0 {
				t.Fatalf("classify(%d, %q) = %v", status, body, err)
			}
			if len(e.KBSDetail) > 600 || strings.ContainsAny(e.KBSDetail, "\n\r\x00") {
				t.Fatalf("unsanitized detail %q", e.KBSDetail)
			}
		}
	})
}

// FuzzTokenLifetime feeds arbitrary tokens and challenge extra-params.
func FuzzTokenLifetime(f *testing.F) {
	f.Add("eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjEsImlhdCI6MH0.c2ln", []byte(`""`))
	f.Add("a.b.c", []byte(`{"selected-hash-algorithm":"sha256"}`))
	f.Add("", []byte(`{`))
	f.Fuzz(func(t *testing.T, tok string, extra []byte) {
		if life, err := tokenLifetime(tok, time.Unix(0, 0)); err == nil && life <= 0 {
			t.Fatalf("accepted non-positive lifetime %v", life)
		}
		if h, err := selectedHash(json.RawMessage(extra)); err == nil {
			if _, err := h.new(); err != nil {
				t.Fatalf("selectedHash returned unusable %q", h)
			}
		}
	})
}
