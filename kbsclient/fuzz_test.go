package kbsclient

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/resource"
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

// FuzzKBSResponses runs whole handshakes and resource GETs against a KBS
// that answers with fuzzed bodies and statuses: every outcome is a value or
// a classified error, never a panic or a hang.
func FuzzKBSResponses(f *testing.F) {
	f.Add(200, []byte(`{"nonce":"AAAA","extra-params":""}`), 200, []byte(`{"token":"a.b.c"}`), 200, []byte(`{}`))
	f.Add(200, []byte(`{"nonce":"AAAA","extra-params":{"selected-hash-algorithm":"sha512"}}`), 200, []byte(`{"token":"eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.AA"}`), 401, []byte(`{"type":"https://github.com/confidential-containers/kbs/errors/TokenNotFound","detail":"x"}`))
	f.Add(500, []byte(`<html>`), 200, []byte(`null`), 200, []byte(`[]`))
	f.Fuzz(func(t *testing.T, authStatus int, auth []byte, attestStatus int, attest []byte, resStatus int, res []byte) {
		answer := func(status int, body []byte) (*http.Response, error) {
			if status < 100 || status > 599 {
				status = 200
			}
			return &http.Response{StatusCode: status, Body: io.NopCloser(bytes.NewReader(body)), Header: http.Header{}}, nil
		}
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/auth"):
				return answer(authStatus, auth)
			case strings.HasSuffix(r.URL.Path, "/attest"):
				return answer(attestStatus, attest)
			}
			return answer(resStatus, res)
		})
		c, err := New(Config{URL: "http://kbs.invalid", Attester: sample.Attester{}, HTTPClient: &http.Client{Transport: rt},
			MaxRetries: -1, MaxResponseBytes: 1 << 16, Rand: func() float64 { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Resource(ctx, resource.Path{Repo: "r", Type: "t", Tag: "x"})
		if err != nil {
			var kerr *Error
			if !errors.As(err, &kerr) || kerr.Kind == 0 {
				t.Fatalf("unclassified error: %v", err)
			}
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
