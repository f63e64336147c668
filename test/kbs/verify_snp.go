package kbs

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cdh-proxy/cdh-proxy/attester/snp"
)

// verifySNP does what Trustee's SNP verifier does with the sev-crate JSON:
// re-encode the raw report, check the VCEK chain up to a trusted ARK and the
// report signature (go-sev-guest verify, no network), then VMPL 0 and the
// report_data binding (digest zero-padded to 64). With init-data, HOSTDATA
// must equal its digest truncated to 32 bytes.
func verifySNP(primary json.RawMessage, digest []byte, initDigest []byte, roots map[string][]*trust.AMDRootCerts, now time.Time) (map[string]any, error) {
	if roots == nil {
		return nil, errors.New("no SNP trust anchors configured in the test KBS")
	}
	var ev snp.Evidence
	if err := json.Unmarshal(primary, &ev); err != nil || ev.AttestationReport == nil {
		return nil, fmt.Errorf("snp evidence is not {\"attestation_report\",\"cert_chain\"}: %v", err)
	}
	if ev.CertChain != nil && len(ev.CertChain) == 0 {
		return nil, errors.New("cert_chain must include a VCEK/VLEK")
	}
	if v := ev.AttestationReport.Version; v < 3 || v > 5 {
		return nil, fmt.Errorf("snp report version %d not accepted (3..5)", v)
	}
	raw, err := ev.AttestationReport.Raw()
	if err != nil {
		return nil, err
	}
	rep, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("snp report: %w", err)
	}
	chain := &spb.CertificateChain{}
	for _, c := range ev.CertChain {
		switch c.CertType {
		case "VCEK":
			chain.VcekCert = c.Data
		case "VLEK":
			chain.VlekCert = c.Data
		case "ASK":
			chain.AskCert = c.Data
		case "ARK":
			chain.ArkCert = c.Data
		}
	}
	if chain.VcekCert == nil && chain.VlekCert == nil {
		return nil, errors.New("no VCEK in cert_chain (the test KBS cannot fetch one from AMD)")
	}
	if _, err := x509.ParseCertificate(chain.VcekCert); chain.VcekCert != nil && err != nil {
		return nil, fmt.Errorf("VCEK: %w", err)
	}
	opts := &verify.Options{TrustedRoots: roots, DisableCertFetching: true, Now: now, Getter: noNetwork{}}
	if err := verify.SnpAttestation(&spb.Attestation{Report: rep, CertificateChain: chain}, opts); err != nil {
		return nil, fmt.Errorf("snp signature chain: %w", err)
	}
	if rep.GetVmpl() != 0 {
		return nil, fmt.Errorf("snp report VMPL %d, want 0", rep.GetVmpl())
	}
	want := make([]byte, 64)
	copy(want, digest)
	if !bytes.Equal(rep.GetReportData(), want) {
		return nil, errors.New("report_data does not match the runtime data binding")
	}
	if initDigest != nil {
		want := make([]byte, 32)
		copy(want, initDigest) // sha384/sha512 truncated, sha256 as is
		if !bytes.Equal(rep.GetHostData(), want) {
			return nil, errors.New("init-data digest does not match HOSTDATA")
		}
	}
	return map[string]any{"measurement": fmt.Sprintf("%x", rep.GetMeasurement()), "report_data": fmt.Sprintf("%x", rep.GetReportData())}, nil
}

// noNetwork refuses every fetch: tests never leave the machine.
type noNetwork struct{}

func (noNetwork) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("test KBS: no network (wanted %s)", url)
}
