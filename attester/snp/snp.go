// Package snp produces AMD SEV-SNP evidence in the sev-crate JSON shape that
// Trustee's verifier expects: an extended report at VMPL 0 with its
// certificate chain, report_data = the binding digest zero-padded to 64 bytes.
package snp

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// Tee is the KBS tee name.
const Tee = "snp"

// Provider gets a raw report (0x4A0 bytes, possibly followed by nothing
// else) and its certificate table from the hardware. Implementations: the
// configfs-tsm provider, the /dev/sev-guest device, and test simulators.
type Provider interface {
	Report(ctx context.Context, reportData [64]byte) (raw, certTable []byte, err error)
}

// Evidence is the primary evidence sent to the KBS.
type Evidence struct {
	AttestationReport *Report     `json:"attestation_report"`
	CertChain         []CertEntry `json:"cert_chain"` // null when no VCEK/VLEK
}

// Attester is the SEV-SNP attester.
type Attester struct {
	p Provider
}

var _ attester.Attester = (*Attester)(nil)

// New returns an Attester over p.
func New(p Provider) *Attester { return &Attester{p: p} }

// Tee implements attester.Attester.
func (*Attester) Tee() string { return Tee }

// Evidence implements attester.Attester.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	var rd [64]byte
	if len(reportData) > len(rd) {
		return nil, attester.ErrReportDataTooLong
	}
	copy(rd[:], reportData) // zero-padded (spec "report_data binding")
	raw, certs, err := a.p.Report(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("snp report: %w", err)
	}
	rep, err := ParseReport(raw)
	if err != nil {
		return nil, err
	}
	if rep.VMPL != 0 {
		return nil, fmt.Errorf("snp report at VMPL %d, want 0", rep.VMPL)
	}
	if string(rep.ReportData) != string(rd[:]) {
		return nil, fmt.Errorf("snp report does not carry the requested report_data")
	}
	chain, err := CertChain(certs)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Evidence{AttestationReport: rep, CertChain: chain})
}
