package kbsclient

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
)

// The worked vector of spec kbs-protocol.md, "report_data binding".
const (
	vecNonce     = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	vecCanonical = `{"additional-evidence":"","nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE","y":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"}}`
	vecSHA384    = "d934ba73c76ad6ce42e80746cefb42b74c7e0af0f0d30ace51557c3da2a8fe7608b3c6856f09e1f101fd459a86b1c846"
	vecSampleRD  = "2TS6c8dq1s5C6AdGzvtCt0x+CvDw0wrOUVV8PaKo/nYIs8aFbwnh8QH9RZqGschG"
)

func vecJWK() map[string]string {
	return map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
		"x": b64(repeat(1, 32)), "y": b64(repeat(2, 32)),
	}
}

func repeat(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

func TestCanonicalRuntimeDataVector(t *testing.T) {
	got, err := canonicalRuntimeData(vecNonce, vecJWK(), "")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != vecCanonical {
		t.Fatalf("canonical bytes:\n got %s\nwant %s", got, vecCanonical)
	}
}

func TestReportDataVector(t *testing.T) {
	rd, err := ReportData(SHA384, vecNonce, vecJWK(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(rd); got != vecSHA384 {
		t.Fatalf("SHA-384 = %s, want %s", got, vecSHA384)
	}
	if got := base64.StdEncoding.EncodeToString(rd); got != vecSampleRD {
		t.Fatalf("sample report_data = %s, want %s", got, vecSampleRD)
	}
}

func TestCanonicalNoHTMLEscaping(t *testing.T) {
	// A nonce is opaque: characters json.Marshal would escape (<, >, &) must
	// pass verbatim, as JCS requires.
	got, err := canonicalRuntimeData("a<b>&c", map[string]string{"kty": "EC"}, "")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"additional-evidence":"","nonce":"a<b>&c","tee-pubkey":{"kty":"EC"}}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestSelectedHash(t *testing.T) {
	tests := []struct {
		name    string
		extra   string
		want    HashAlgorithm
		wantErr bool
	}{
		{name: "trustee empty string", extra: `""`, want: SHA384},
		{name: "null", extra: `null`, want: SHA384},
		{name: "absent", extra: ``, want: SHA384},
		{name: "object without hash", extra: `{"foo":1}`, want: SHA384},
		{name: "ita sha256", extra: `{"selected-hash-algorithm":"sha256"}`, want: SHA256},
		{name: "sha512", extra: `{"selected-hash-algorithm":"sha512"}`, want: SHA512},
		{name: "unknown hash", extra: `{"selected-hash-algorithm":"md5"}`, wantErr: true},
		{name: "number", extra: `42`, want: SHA384},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selectedHash(json.RawMessage(tt.extra))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("selectedHash(%s) = %q, %v; want %q, err=%v", tt.extra, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestReportDataLengths(t *testing.T) {
	for h, n := range map[HashAlgorithm]int{SHA256: 32, SHA384: 48, SHA512: 64} {
		rd, err := ReportData(h, vecNonce, vecJWK(), "")
		if err != nil || len(rd) != n {
			t.Errorf("%s: len %d, err %v; want %d", h, len(rd), err, n)
		}
	}
}
