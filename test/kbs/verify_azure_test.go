package kbs

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

// The recorded az-snp-vtpm v2 evidence (testdata/README.md) verifies fully:
// quote signature under HCLAkPub, nonce, PCR digest, user-data, var-data
// binding, and the SNP report under its VCEK under AMD's real roots.
func TestAzureSNPVectorVerifies(t *testing.T) {
	ev := readVector(t, "testdata/az-snp-vtpm-evidence-v2.json")
	rd, _ := hex.DecodeString("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef")
	claims, err := verifyAzure(azure.TeeSNP, ev, rd, nil, amdRoots(), nil, time.Now())
	if err != nil {
		t.Fatalf("recorded evidence rejected: %v", err)
	}
	if claims["report_data"] != hex.EncodeToString(rd) {
		t.Errorf("claims %v", claims)
	}

	// Each check can fail on its own.
	other := append([]byte{}, rd...)
	other[0] ^= 1
	if _, err := verifyAzure(azure.TeeSNP, ev, other, nil, amdRoots(), nil, time.Now()); err == nil || !strings.Contains(err.Error(), "nonce") {
		t.Errorf("another nonce: %v", err)
	}
	if _, err := verifyAzure(azure.TeeSNP, ev, rd, nil, nil, nil, time.Now()); err == nil {
		t.Error("no roots: accepted")
	}
	for name, tc := range map[string]struct {
		mut  func(*evidence.Evidence)
		want string
	}{
		"signature":     {func(e *evidence.Evidence) { e.TPMQuote.Signature[10] ^= 1 }, "signature"},
		"message":       {func(e *evidence.Evidence) { e.TPMQuote.Message[len(e.TPMQuote.Message)-1] ^= 1 }, "signature"},
		"pcr":           {func(e *evidence.Evidence) { e.TPMQuote.PCRs[4][0] ^= 1 }, "PCR"},
		"var data":      {func(e *evidence.Evidence) { flipVarData(t, e, "vm-configuration") }, "var data"},
		"user-data":     {func(e *evidence.Evidence) { flipVarData(t, e, "user-data") }, "user-data"},
		"snp signature": {func(e *evidence.Evidence) { e.HCLReport[32+0x2A0] ^= 1 }, "SNP report"},
		"vcek":          {func(e *evidence.Evidence) { e.VCEK[len(e.VCEK)-5] ^= 1 }, "SNP report"},
	} {
		e, err := evidence.ParseEvidence(azure.TeeSNP, ev)
		if err != nil {
			t.Fatal(err)
		}
		tc.mut(e)
		b, _ := json.Marshal(e)
		if _, err := verifyAzure(azure.TeeSNP, b, rd, nil, amdRoots(), nil, time.Now()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s tampered: %v (want %q)", name, err, tc.want)
		}
	}
}

// The recorded az-tdx-vtpm v1 evidence passes everything but Intel's quote
// signature, which needs Intel's collateral (not available offline).
func TestAzureTDXVectorVerifiesButDCAP(t *testing.T) {
	raw := readVector(t, "testdata/az-tdx-vtpm-evidence-v1.json")
	ev, err := evidence.ParseEvidence(azure.TeeTDX, raw)
	if err != nil {
		t.Fatal(err)
	}
	hcl, err := verifyAzureTPM(ev, []byte("challenge"), nil)
	if err != nil {
		t.Fatalf("TPM part rejected: %v", err)
	}
	rd, err := tdx.ReportDataOf(ev.TDQuote)
	if err != nil {
		t.Fatal(err)
	}
	if err := claimsBound(hcl, rd); err != nil {
		t.Fatalf("td_quote does not bind the claims: %v", err)
	}
	if _, err := verifyAzureTPM(ev, []byte("challengf"), nil); err == nil {
		t.Error("another nonce accepted")
	}
	rd[3] ^= 1
	if err := claimsBound(hcl, rd); err == nil {
		t.Error("altered report_data accepted")
	}
}

func readVector(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flipVarData changes one character inside the value of key in the HCL
// report's runtime claims, keeping their length.
func flipVarData(t *testing.T, e *evidence.Evidence, key string) {
	t.Helper()
	hcl, err := evidence.ParseHCLReport(e.HCLReport)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(hcl.VarData), `"`+key+`":`)
	if i < 0 {
		t.Fatalf("no %s in claims", key)
	}
	p := i + len(key) + 5 // past `"key":"` (or `"key":{`) into the value
	if hcl.VarData[p] == '0' {
		hcl.VarData[p] = '1'
	} else {
		hcl.VarData[p] = '0'
	}
}

// Evidence from the attester over swtpm and the simulated paravisor: the
// init-data check on PCR8, and the trust anchors, each refuse on their own.
func TestAzureSimulatedInitDataAndRoots(t *testing.T) {
	p, err := fakehw.NewAzureCVM(evidence.TeeSNP, true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	a, err := azure.New(azure.NewDevice(azure.Options{TPM: p.TPM, IMDS: p.IMDS}), azure.TeeSNP, 2)
	if err != nil {
		t.Fatal(err)
	}
	init := sha256.Sum256([]byte("initdata"))
	if _, err := a.BindInitData(ctx, "sha256", init[:]); err != nil {
		t.Fatal(err)
	}
	rd := sha512.Sum384([]byte("binding"))
	ev, err := a.Evidence(ctx, rd[:])
	if err != nil {
		t.Fatal(err)
	}
	roots := p.SNP.TrustedRoots()
	if _, err := verifyAzure(azure.TeeSNP, ev, rd[:], init[:], roots, nil, time.Now()); err != nil {
		t.Fatalf("bound init-data rejected: %v", err)
	}
	if _, err := verifyAzure(azure.TeeSNP, ev, rd[:], nil, roots, nil, time.Now()); err != nil {
		t.Fatalf("without init-data: %v", err)
	}
	other := sha256.Sum256([]byte("other"))
	if _, err := verifyAzure(azure.TeeSNP, ev, rd[:], other[:], roots, nil, time.Now()); err == nil || !strings.Contains(err.Error(), "does not match PCR8") {
		t.Errorf("other init-data: %v", err)
	}
	if _, err := verifyAzure(azure.TeeSNP, ev, rd[:], make([]byte, 48), roots, nil, time.Now()); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("sha384 init-data: %v", err)
	}
	if _, err := verifyAzure(azure.TeeSNP, ev, rd[:], nil, amdRoots(), nil, time.Now()); err == nil || !strings.Contains(err.Error(), "SNP report signature chain") {
		t.Errorf("simulated chain under AMD's real roots: %v", err)
	}
	if _, err := verifyAzure(azure.TeeTDX, ev, rd[:], nil, roots, nil, time.Now()); err == nil {
		t.Error("SNP evidence accepted as az-tdx-vtpm")
	}
}
