package sealed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func newKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jose.JSONWebKey{Key: &k.PublicKey, KeyID: "extra members are fine", Use: "sig"}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return k, pub
}

func TestSealParseVerify(t *testing.T) {
	k, pub := newKey(t)
	s, err := Seal(Vault("kbs:///default/sealed-secret/test"), "kbs:///default/signing-key/sealed-secret", k)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(s, true)
	if err != nil {
		t.Fatal(err)
	}
	if p.Header.Kid != "kbs:///default/signing-key/sealed-secret" || p.Secret.Name != "kbs:///default/sealed-secret/test" {
		t.Fatalf("parsed %+v", p)
	}
	if err := p.Verify(pub); err != nil {
		t.Fatalf("genuine signature: %v", err)
	}
	_, otherPub := newKey(t)
	if err := p.Verify(otherPub); !errors.Is(err, ErrSignature) {
		t.Fatalf("other key: %v", err)
	}
	rsaJWK := []byte(`{"kty":"RSA","n":"sXch","e":"AQAB"}`)
	if err := p.Verify(rsaJWK); !errors.Is(err, ErrSignature) {
		t.Fatalf("RSA key: %v", err)
	}
}

func TestSkipVerificationLegacyForm(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"version":"0.1.0","type":"vault","name":"kbs:///default/key/1","provider":"KBS","provider_settings":{},"annotations":{}}`))
	in := "sealed.fakejwsheader." + payload + ".fakesignature"
	p, err := Parse(in, false)
	if err != nil || p.Secret.Name != "kbs:///default/key/1" {
		t.Fatalf("legacy form: %+v %v", p, err)
	}
	if _, err := Parse(in, true); !errors.Is(err, ErrSignature) {
		t.Fatalf("fake header with verification on: %v", err)
	}
}

func TestHostileInputs(t *testing.T) {
	k, _ := newKey(t)
	good, _ := Seal(Vault("kbs:///a/b/c"), "kbs:///a/b/key", k)
	parts := strings.Split(strings.TrimPrefix(good, Prefix), ".")
	enc := base64.RawURLEncoding.EncodeToString
	hdr := func(h string) string { return Prefix + enc([]byte(h)) + "." + parts[1] + "." + parts[2] }
	pl := func(p string) string { return Prefix + parts[0] + "." + enc([]byte(p)) + "." + parts[2] }
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"no prefix", strings.TrimPrefix(good, Prefix), ErrMalformed},
		{"too few parts", Prefix + parts[0] + "." + parts[1], ErrMalformed},
		{"too many parts", good + ".x", ErrMalformed},
		{"bad payload base64", Prefix + parts[0] + ".!!!." + parts[2], ErrMalformed},
		{"payload not json", pl("nope"), ErrMalformed},
		{"wrong version", pl(`{"version":"0.2.0","type":"vault","provider":"kbs","name":"kbs:///a/b/c","provider_settings":{},"annotations":{}}`), ErrMalformed},
		{"wrong type", pl(`{"version":"0.1.0","type":"box","provider":"kbs","name":"x","provider_settings":{},"annotations":{}}`), ErrMalformed},
		{"envelope", pl(`{"version":"0.1.0","type":"envelope","provider":"kbs","name":"x","provider_settings":{},"annotations":{}}`), ErrUnsupported},
		{"aliyun", pl(`{"version":"0.1.0","type":"vault","provider":"aliyun","name":"x","provider_settings":{},"annotations":{}}`), ErrUnsupported},
		{"missing fields", pl(`{"version":"0.1.0","type":"vault","provider":"kbs","name":"x"}`), ErrMalformed},
		{"alg none", hdr(`{"alg":"none","kid":"k"}`), ErrSignature},
		{"alg HS256", hdr(`{"alg":"HS256","kid":"k"}`), ErrSignature},
		{"no kid", hdr(`{"alg":"ES256"}`), ErrSignature},
		{"b64 false", hdr(`{"alg":"ES256","kid":"k","b64":false}`), ErrSignature},
		{"short signature", Prefix + parts[0] + "." + parts[1] + "." + enc([]byte("short")), ErrSignature},
		{"huge", Prefix + strings.Repeat("A", 70000), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse(tt.in, true); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestKidFile(t *testing.T) {
	if p, local, err := KidFile(LocalKeyDir, "signing-key"); err != nil || !local || p != LocalKeyDir+"/signing-key" {
		t.Fatalf("bare name: %q %v %v", p, local, err)
	}
	if _, local, err := KidFile(LocalKeyDir, "kbs:///a/b/c"); err != nil || local {
		t.Fatalf("URI kid: %v %v", local, err)
	}
	for _, bad := range []string{"../etc/shadow", "a/b", "..", ".", "a\x00b"} {
		if _, _, err := KidFile(LocalKeyDir, bad); err == nil {
			t.Errorf("kid %q accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	k, _ := newKey(f)
	good, _ := Seal(Vault("kbs:///a/b/c"), "kbs:///a/b/key", k)
	f.Add(good, true)
	f.Add("sealed.fakejwsheader.eyJ9.fakesignature", false)
	f.Add("sealed....", true)
	f.Fuzz(func(t *testing.T, in string, verify bool) {
		s, err := Parse(in, verify)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrSignature) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if s.Secret.Version != "0.1.0" || s.Secret.Type != "vault" || !strings.EqualFold(s.Secret.Provider, "kbs") {
			t.Fatalf("accepted invalid secret %+v", s.Secret)
		}
		if verify {
			_ = s.Verify(json.RawMessage(`{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}`))
		}
	})
}
