package kbsclient

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func encryptFor(t *testing.T, alg jose.KeyAlgorithm, enc jose.ContentEncryption, pub any) []byte {
	t.Helper()
	e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: alg, Key: pub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := e.Encrypt([]byte("a secret"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(obj.FullSerialize())
}

func TestDecryptOnlyAdvertisedAlgorithms(t *testing.T) {
	ec, err := newTEEKey(KeyEC256)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := newTEEKey(KeyRSA256)
	if err != nil {
		t.Fatal(err)
	}
	ecPub := ec.priv.(crypto.Signer).Public()
	rsaPub := rsaKey.priv.(crypto.Signer).Public()
	other, _ := rsa.GenerateKey(rand.Reader, 2048)

	tests := []struct {
		name string
		key  *teeKey
		body []byte
		ok   bool
	}{
		{"EC as advertised", ec, encryptFor(t, jose.ECDH_ES_A256KW, jose.A256GCM, ecPub), true},
		{"RSA as advertised", rsaKey, encryptFor(t, jose.RSA_OAEP_256, jose.A256GCM, rsaPub), true},
		{"EC key, other content encryption", ec, encryptFor(t, jose.ECDH_ES_A256KW, jose.A128GCM, ecPub), false},
		{"EC key, direct ECDH-ES", ec, encryptFor(t, jose.ECDH_ES, jose.A256GCM, ecPub), false},
		{"RSA key, RSA1_5 downgrade", rsaKey, encryptFor(t, jose.RSA1_5, jose.A256GCM, rsaPub), false},
		{"RSA key, JWE for another key", rsaKey, encryptFor(t, jose.RSA_OAEP_256, jose.A256GCM, &other.PublicKey), false},
		{"compact serialization", ec, []byte("a.b.c.d.e"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plain, err := tt.key.decrypt(tt.body)
			if tt.ok != (err == nil) {
				t.Fatalf("decrypt: %q, %v; want ok=%v", plain, err, tt.ok)
			}
			if tt.ok && string(plain) != "a secret" {
				t.Fatalf("plaintext %q", plain)
			}
		})
	}
}

func TestPrivatePEM(t *testing.T) {
	for alg, want := range map[KeyAlgorithm]string{KeyEC256: "-----BEGIN PRIVATE KEY-----", KeyRSA256: "-----BEGIN RSA PRIVATE KEY-----"} {
		k, err := newTEEKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		pem, err := k.privatePEM()
		if err != nil || string(pem[:len(want)]) != want {
			t.Fatalf("%s: %.40q %v", alg, pem, err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	for _, alg := range []KeyAlgorithm{KeyEC256, KeyEC521, KeyRSA256} {
		b.Run(string(alg), func(b *testing.B) {
			k, err := newTEEKey(alg)
			if err != nil {
				b.Fatal(err)
			}
			jweAlg := jose.ECDH_ES_A256KW
			if alg == KeyRSA256 {
				jweAlg = jose.RSA_OAEP_256
			}
			e, _ := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jweAlg, Key: k.priv.(crypto.Signer).Public()}, nil)
			obj, _ := e.Encrypt(make([]byte, 4096))
			body := []byte(obj.FullSerialize())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.decrypt(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
