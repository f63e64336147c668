package kbs

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	tdxverify "github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tpm/tpm2"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
)

// verifyAzure checks az-snp-vtpm / az-tdx-vtpm evidence as Trustee does:
// the vTPM quote, then the hardware report that vouches for the vTPM's key.
func verifyAzure(tee string, primary json.RawMessage, digest, initDigest []byte, snpRoots map[string][]*trust.AMDRootCerts, tdxRoots *x509.CertPool, now time.Time) (map[string]any, error) {
	ev, err := evidence.ParseEvidence(tee, primary)
	if err != nil {
		return nil, err
	}
	hcl, err := verifyAzureTPM(ev, digest, initDigest)
	if err != nil {
		return nil, err
	}
	var rd []byte
	switch tee {
	case azure.TeeSNP:
		rd, err = verifyAzureSNP(ev, hcl, snpRoots, now)
	case azure.TeeTDX:
		if tdxRoots == nil {
			return nil, errors.New("no TDX trust anchors configured in the test KBS")
		}
		if err = tdxverify.RawTdxQuote(ev.TDQuote, &tdxverify.Options{TrustedRoots: tdxRoots, Now: now}); err != nil {
			return nil, fmt.Errorf("td_quote signature chain: %w", err)
		}
		rd, err = tdx.ReportDataOf(ev.TDQuote)
	}
	if err != nil {
		return nil, err
	}
	if err := claimsBound(hcl, rd); err != nil {
		return nil, err
	}
	return map[string]any{"report_data": hex.EncodeToString(digest), "evidence_version": ev.Version}, nil
}

// verifyAzureTPM checks everything the vTPM signs, and the claims around
// it: the quote's signature under HCLAkPub, its nonce, the PCR values, the
// user-data claim (version 2) and, with init-data, PCR8.
func verifyAzureTPM(ev *evidence.Evidence, digest, initDigest []byte) (*evidence.HCLReport, error) {
	hcl, err := evidence.ParseHCLReport(ev.HCLReport)
	if err != nil {
		return nil, fmt.Errorf("hcl_report: %w", err)
	}
	claims, err := hcl.Claims()
	if err != nil {
		return nil, err
	}
	ak, err := claims.AKPub()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(ev.TPMQuote.Message)
	if err := rsa.VerifyPKCS1v15(ak, crypto.SHA256, sum[:], ev.TPMQuote.Signature); err != nil {
		return nil, errors.New("TPM quote signature does not verify with HCLAkPub")
	}
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.TPMQuote.Message)
	if err != nil {
		return nil, fmt.Errorf("TPM quote message: %w", err)
	}
	if attest.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("TPM quote message is not a quote (type %#x)", attest.Type)
	}
	if !bytes.Equal(attest.ExtraData.Buffer, digest) {
		return nil, errors.New("TPM quote nonce (extraData) does not match the runtime data binding")
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("TPM quote message: %w", err)
	}
	if n := quotedSHA256PCRs(info.PCRSelect); n != len(ev.TPMQuote.PCRs) {
		return nil, fmt.Errorf("TPM quote covers %d SHA-256 PCRs, evidence lists %d", n, len(ev.TPMQuote.PCRs))
	}
	h := sha256.New()
	for _, p := range ev.TPMQuote.PCRs {
		h.Write(p)
	}
	if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
		return nil, errors.New("PCR values do not match the TPM quote's PCR digest")
	}
	if ev.Version >= 2 {
		ud, err := hex.DecodeString(claims.UserData)
		if err != nil || !bytes.HasPrefix(ud, digest) {
			return nil, errors.New("HCL user-data does not carry the runtime data binding")
		}
	}
	if initDigest != nil {
		if len(initDigest) != sha256.Size {
			return nil, errors.New("init-data for Azure vTPM evidence must use algorithm sha256 (PCR8)")
		}
		want := sha256.Sum256(append(make([]byte, 32), initDigest...))
		if !bytes.Equal(ev.TPMQuote.PCRs[8], want[:]) {
			return nil, errors.New("init-data digest does not match PCR8")
		}
	}
	return hcl, nil
}

// quotedSHA256PCRs counts the SHA-256 PCRs a quote selects; it must be
// exactly PCR0–23 in order for the evidence's list to mean anything.
func quotedSHA256PCRs(sel tpm2.TPMLPCRSelection) int {
	if len(sel.PCRSelections) != 1 || sel.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return -1
	}
	n := 0
	for i, b := range sel.PCRSelections[0].PCRSelect {
		if b != 0xff || i > 2 {
			return -1
		}
		n += 8
	}
	return n
}

// verifyAzureSNP verifies the SNP report inside the HCL report under the
// evidence's VCEK and the trusted AMD roots, and returns its report_data.
func verifyAzureSNP(ev *evidence.Evidence, hcl *evidence.HCLReport, roots map[string][]*trust.AMDRootCerts, now time.Time) ([]byte, error) {
	if roots == nil {
		return nil, errors.New("no SNP trust anchors configured in the test KBS")
	}
	if _, err := x509.ParseCertificate(ev.VCEK); err != nil {
		return nil, fmt.Errorf("vcek: %w", err)
	}
	rep, err := abi.ReportToProto(hcl.HWReport[:abi.ReportSize])
	if err != nil {
		return nil, fmt.Errorf("SNP report in hcl_report: %w", err)
	}
	att := &spb.Attestation{Report: rep, CertificateChain: &spb.CertificateChain{VcekCert: ev.VCEK}}
	opts := &sevverify.Options{TrustedRoots: roots, DisableCertFetching: true, Now: now, Getter: noNetwork{}}
	if err := sevverify.SnpAttestation(att, opts); err != nil {
		return nil, fmt.Errorf("SNP report signature chain: %w", err)
	}
	if rep.GetVmpl() != 0 {
		return nil, fmt.Errorf("SNP report VMPL %d, want 0", rep.GetVmpl())
	}
	return rep.GetReportData(), nil
}

// claimsBound checks that the hardware report's report_data is
// SHA-256(var data) ‖ zeros: the TEE vouches for HCLAkPub and user-data.
func claimsBound(hcl *evidence.HCLReport, reportData []byte) error {
	sum := sha256.Sum256(hcl.VarData)
	if len(reportData) != 64 || !bytes.Equal(reportData[:32], sum[:]) || !bytes.Equal(reportData[32:], make([]byte, 32)) {
		return errors.New("hardware report_data does not bind the HCL runtime claims (SHA-256 of var data)")
	}
	return nil
}

// amdRoots are AMD's real ARK/ASK as shipped by go-sev-guest, for the
// golden tests on recorded evidence.
func amdRoots() map[string][]*trust.AMDRootCerts {
	out := map[string][]*trust.AMDRootCerts{}
	for product, r := range trust.DefaultRootCerts {
		out[product] = []*trust.AMDRootCerts{r}
	}
	return out
}
