package snp_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify"

	"github.com/cdh-proxy/cdh-proxy/attester/snp"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func loadVector(t *testing.T) (json.RawMessage, snp.Evidence) {
	t.Helper()
	data, err := os.ReadFile("testdata/snp-evidence.json")
	if err != nil {
		t.Fatal(err)
	}
	var ev snp.Evidence
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatal(err)
	}
	return data, ev
}

// The golden test of the offset table: real recorded evidence, mapped back
// to raw bytes, verifies under the VCEK it carries.
func TestGoldenVectorSignature(t *testing.T) {
	_, ev := loadVector(t)
	raw, err := ev.AttestationReport.Raw()
	if err != nil {
		t.Fatal(err)
	}
	if len(ev.CertChain) != 1 || ev.CertChain[0].CertType != "VCEK" {
		t.Fatalf("cert_chain %v", ev.CertChain)
	}
	vcek, err := x509.ParseCertificate(ev.CertChain[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SnpReportSignature(raw, vcek); err != nil {
		t.Fatalf("recorded report does not verify after JSON → raw: %v", err)
	}
	// One flipped bit in any mapped field must break it.
	raw[0x50] ^= 1
	if err := verify.SnpReportSignature(raw, vcek); err == nil {
		t.Fatal("tampered report verified")
	}
}

func TestGoldenVectorJSONRoundTrip(t *testing.T) {
	data, ev := loadVector(t)
	raw, err := ev.AttestationReport.Raw()
	if err != nil {
		t.Fatal(err)
	}
	back, err := snp.ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(back)
	var want struct {
		R json.RawMessage `json:"attestation_report"`
	}
	_ = json.Unmarshal(data, &want)
	if !jsonEqual(t, got, want.R) {
		t.Fatalf("JSON → raw → JSON differs:\n got %.300s\nwant %.300s", got, want.R)
	}
	if strings.Contains(string(got), "mit_vector") {
		t.Fatal("version 3 report must not carry *_mit_vector keys")
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// raw → JSON → raw is byte-identical over TCB layouts and report versions.
func TestRawJSONRawRoundTrip(t *testing.T) {
	for _, product := range []string{"Milan", "Genoa", "Turin"} {
		for _, version := range []uint32{2, 3, 5} {
			t.Run(product+"/v"+string(rune('0'+version)), func(t *testing.T) {
				hw, err := fakehw.NewSNP(product)
				if err != nil {
					t.Fatal(err)
				}
				hw.Version = version
				var rd [64]byte
				copy(rd[:], "binding digest")
				raw, err := hw.RawReport(rd)
				if err != nil {
					t.Fatal(err)
				}
				// Non-zero TCB bytes in every position the layout maps.
				for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} {
					if product == "Turin" && version >= 3 {
						copy(raw[off:], []byte{1, 2, 3, 4, 0, 0, 0, 5})
					} else {
						copy(raw[off:], []byte{1, 2, 0, 0, 0, 0, 3, 4})
					}
				}
				rep, err := snp.ParseReport(raw)
				if err != nil {
					t.Fatal(err)
				}
				js, err := json.Marshal(rep)
				if err != nil {
					t.Fatal(err)
				}
				var back snp.Report
				if err := json.Unmarshal(js, &back); err != nil {
					t.Fatal(err)
				}
				again, err := back.Raw()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, raw) {
					for i := range raw {
						if raw[i] != again[i] {
							t.Fatalf("byte 0x%x differs: %d vs %d\n%s", i, raw[i], again[i], js)
						}
					}
				}
				s := string(js)
				if (version >= 5) != strings.Contains(s, `"launch_mit_vector":3`) {
					t.Fatalf("mit vectors wrong for v%d: %s", version, s)
				}
				if (version < 3) != strings.Contains(s, `"cpuid_fam_id":null`) {
					t.Fatalf("cpuid null-ness wrong for v%d", version)
				}
				turinLayout := product == "Turin" && version >= 3
				if turinLayout != !strings.Contains(s, `"fmc":null`) {
					t.Fatalf("fmc wrong for %s v%d: %s", product, version, s)
				}
			})
		}
	}
}

func TestRawRejectsBadJSON(t *testing.T) {
	_, ev := loadVector(t)
	r := *ev.AttestationReport
	r.ReportData = r.ReportData[:63]
	if _, err := r.Raw(); err == nil || !strings.Contains(err.Error(), "report_data") {
		t.Fatalf("short report_data: %v", err)
	}
	r = *ev.AttestationReport
	fmc := uint8(1)
	r.CurrentTCB.FMC = &fmc // fmc on a Genoa report
	if _, err := r.Raw(); err == nil {
		t.Fatal("accepted fmc on Genoa")
	}
	r = *ev.AttestationReport
	r.Version = 5 // v5 without mit vectors
	if _, err := r.Raw(); err == nil {
		t.Fatal("accepted v5 without mit vectors")
	}
	var bad snp.Report
	if err := json.Unmarshal([]byte(`{"family_id":[256]}`), &bad); err == nil {
		t.Fatal("accepted byte 256")
	}
}

func TestCertChain(t *testing.T) {
	hw, err := fakehw.NewSNP("Genoa")
	if err != nil {
		t.Fatal(err)
	}
	_, table, err := hw.Report(context.Background(), [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	// go-sev-guest's quote provider appends a platform-info entry with an
	// unknown GUID; it must be dropped.
	ext, err := abi.ExtendPlatformCertTable(table, &abi.ExtraPlatformInfo{Size: abi.ExtraPlatformInfoV0Size, Cpuid1Eax: 0xA00F11})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := snp.CertChain(ext)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range chain {
		types = append(types, c.CertType)
		if _, err := x509.ParseCertificate(c.Data); err != nil && c.CertType != "CRL" {
			t.Errorf("%s: %v", c.CertType, err)
		}
	}
	if strings.Join(types, ",") != "ARK,ASK,VCEK,VLEK" {
		t.Fatalf("cert types %v", types)
	}
	if c, err := snp.CertChain(nil); c != nil || err != nil {
		t.Fatalf("empty table: %v %v", c, err)
	}
	js, _ := json.Marshal(snp.Evidence{AttestationReport: nil, CertChain: nil})
	if !strings.Contains(string(js), `"cert_chain":null`) {
		t.Fatalf("no VCEK must be null, got %s", js)
	}
}

func TestEvidence(t *testing.T) {
	hw, err := fakehw.NewSNP("Genoa")
	if err != nil {
		t.Fatal(err)
	}
	a := snp.New(hw)
	digest := bytes.Repeat([]byte{7}, 48)
	js, err := a.Evidence(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	var ev snp.Evidence
	if err := json.Unmarshal(js, &ev); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), digest...), make([]byte, 16)...)
	if !bytes.Equal(ev.AttestationReport.ReportData, want) || len(ev.CertChain) == 0 {
		t.Fatalf("report_data %x, chain %d", ev.AttestationReport.ReportData, len(ev.CertChain))
	}
	if _, err := a.Evidence(context.Background(), make([]byte, 65)); err == nil {
		t.Fatal("accepted 65 bytes of report data")
	}
	hw.VMPL = 1
	if _, err := a.Evidence(context.Background(), digest); err == nil || !strings.Contains(err.Error(), "VMPL") {
		t.Fatalf("VMPL 1 report: %v", err)
	}
}
