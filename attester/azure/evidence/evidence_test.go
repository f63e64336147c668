package evidence

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

// The recorded Trustee vectors (testdata/README.md) parse, and re-encode
// byte for byte in the vectors' own indentation.
func TestVectorsRoundTrip(t *testing.T) {
	for _, tc := range []struct{ file, tee string }{
		{"testdata/az-snp-vtpm-evidence-v2.json", TeeSNP},
		{"testdata/az-tdx-vtpm-evidence-v1.json", TeeTDX},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := ParseEvidence(tc.tee, data)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		out, err := json.MarshalIndent(ev, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if out = append(out, '\n'); !bytes.Equal(out, data) {
			t.Errorf("%s: re-encoding differs from the recorded bytes", tc.file)
		}
		hcl, err := ParseHCLReport(ev.HCLReport)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if hcl.Tee() != tc.tee || !hcl.Consistent() || len(hcl.Raw) != 2600 {
			t.Errorf("%s: tee %s consistent %v len %d", tc.file, hcl.Tee(), hcl.Consistent(), len(hcl.Raw))
		}
		c, err := hcl.Claims()
		if err != nil {
			t.Fatal(err)
		}
		if k, err := c.AKPub(); err != nil || k.N.BitLen() != 2048 || k.E != 65537 {
			t.Errorf("%s: HCLAkPub %v", tc.file, err)
		}
	}
}

func TestUserDataFor(t *testing.T) {
	rd, _ := hex.DecodeString("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef")
	want := "982F5C6E45DF0ED3F10B6F60B02F0C8390E281300F3805E2279C16168CD6AE9AA398F647CAA2338748CD0FD9F5F819EF00000000000000000000000000000000"
	if got := UserDataFor(rd); got != want {
		t.Fatalf("UserDataFor = %s", got)
	}
}

func TestParseEvidenceRejects(t *testing.T) {
	data, err := os.ReadFile("testdata/az-snp-vtpm-evidence-v2.json")
	if err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(map[string]any){
		"version 3":         func(m map[string]any) { m["version"] = 3 },
		"standard base64":   func(m map[string]any) { m["vcek"] = "ab+/" },
		"uppercase hex":     func(m map[string]any) { m["tpm_quote"].(map[string]any)["signature"] = "0CA0" },
		"23 pcrs":           func(m map[string]any) { q := m["tpm_quote"].(map[string]any); q["pcrs"] = q["pcrs"].([]any)[1:] },
		"td_quote and vcek": func(m map[string]any) { m["td_quote"] = "AAAA" },
		"short pcr":         func(m map[string]any) { m["tpm_quote"].(map[string]any)["pcrs"].([]any)[3] = "00" },
	} {
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		mut(m)
		b, _ := json.Marshal(m)
		if _, err := ParseEvidence(TeeSNP, b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseHCLReportRejects(t *testing.T) {
	good := make([]byte, 2048)
	copy(good, "HCLA")
	le := func(o int, v uint32) {
		good[o], good[o+1], good[o+2], good[o+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	le(claimsOffset+8, reportTypeSNP)
	le(claimsOffset+12, hashTypeSHA256)
	le(claimsOffset+16, 10)
	if _, err := ParseHCLReport(good); err != nil {
		t.Fatalf("good: %v", err)
	}
	for name, mut := range map[string]func([]byte) []byte{
		"short":         func(b []byte) []byte { return b[:100] },
		"signature":     func(b []byte) []byte { b[0] = 'X'; return b },
		"report type 3": func(b []byte) []byte { b[claimsOffset+8] = 3; return b },
		"hash type 2":   func(b []byte) []byte { b[claimsOffset+12] = 2; return b },
		"var size":      func(b []byte) []byte { b[claimsOffset+17] = 0xff; return b },
	} {
		if _, err := ParseHCLReport(mut(bytes.Clone(good))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
