// Package fakehw simulates TEE hardware for tests: it produces SEV-SNP
// reports and TDX quotes that are really signed, under throwaway roots that
// the test KBS is told to trust, for any report data. It is test code and
// never part of cdh-proxy's production build.
package fakehw

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	sgtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
)

// SNP is a simulated SEV-SNP platform: go-sev-guest's test-only AMD
// certificate chain (ARK → ASK → VCEK) signs reports built here.
type SNP struct {
	Product  string // Milan, Genoa or Turin
	Version  uint32 // report version: 2, 3 or 5
	VMPL     uint32
	HostData [32]byte

	ark, ask  *x509.Certificate
	vcekCert  *x509.Certificate
	vcek      *ecdsa.PrivateKey
	certTable []byte
	chipID    [64]byte

	mu    sync.Mutex
	calls int
}

// cpuid family/model per product line (a representative model).
var snpCPUID = map[string][3]uint8{
	"Milan": {0x19, 0x01, 0x01},
	"Genoa": {0x19, 0x11, 0x01},
	"Turin": {0x1A, 0x02, 0x00},
}

// NewSNP builds a simulated platform for product (Milan, Genoa, Turin).
func NewSNP(product string) (*SNP, error) {
	if _, ok := snpCPUID[product]; !ok {
		return nil, fmt.Errorf("fakehw: unknown SNP product %q", product)
	}
	signer, err := sgtest.DefaultTestOnlyCertChain(product, time.Now().Add(-time.Hour))
	if err != nil {
		return nil, err
	}
	table, err := signer.CertTableBytes()
	if err != nil {
		return nil, err
	}
	s := &SNP{Product: product, Version: 3, ark: signer.Ark, ask: signer.Ask, vcekCert: signer.Vcek, vcek: signer.Keys.Vcek, certTable: table, chipID: signer.HWID}
	return s, nil
}

// TrustedRoots is what a verifier must trust for this platform.
func (s *SNP) TrustedRoots() map[string][]*trust.AMDRootCerts {
	return map[string][]*trust.AMDRootCerts{s.Product: {{
		Product: s.Product, ProductLine: s.Product,
		ProductCerts: &trust.ProductCerts{Ark: s.ark, Ask: s.ask},
	}}}
}

// VCEKDER is the platform's VCEK certificate (in-process simulators only).
func (s *SNP) VCEKDER() []byte { return s.vcekCert.Raw }

// Calls counts Report calls.
func (s *SNP) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Report implements snp.Provider: a signed raw report and the cert table.
func (s *SNP) Report(ctx context.Context, rd [64]byte) ([]byte, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	raw, err := s.RawReport(rd)
	if err != nil {
		return nil, nil, err
	}
	return raw, append([]byte(nil), s.certTable...), nil
}

// RawReport builds and signs one report.
func (s *SNP) RawReport(rd [64]byte) ([]byte, error) {
	r := make([]byte, abi.ReportSize)
	le32 := func(o int, v uint32) { binary.LittleEndian.PutUint32(r[o:], v) }
	le32(0x00, s.Version)
	le32(0x04, 1)                                       // guest_svn
	binary.LittleEndian.PutUint64(r[0x08:], 0x30000)    // policy: SMT allowed, reserved bit 17
	le32(0x30, s.VMPL)                                  // vmpl
	le32(0x34, 1)                                       // sig_algo: ECDSA P-384 SHA-384
	le32(0x48, abi.ComposeSignerInfo(abi.SignerInfo{})) // key_info: VCEK
	copy(r[0x50:], rd[:])                               // report_data
	_, _ = rand.Read(r[0x90 : 0x90+48])                 // measurement
	copy(r[0xC0:], s.HostData[:])                       // host_data
	_, _ = rand.Read(r[0x140 : 0x140+32])               // report_id
	copy(r[0x1A0:], s.chipID[:])                        // chip_id
	r[0x1E8], r[0x1E9], r[0x1EA] = 40, 55, 1            // current fw 1.55.40
	r[0x1EC], r[0x1ED], r[0x1EE] = 40, 55, 1            // committed
	if s.Version >= 3 {
		c := snpCPUID[s.Product]
		r[0x188], r[0x189], r[0x18A] = c[0], c[1], c[2]
	}
	if s.Version >= 5 {
		binary.LittleEndian.PutUint64(r[0x1F8:], 3)
		binary.LittleEndian.PutUint64(r[0x200:], 3)
	}
	h := sha512.Sum384(abi.SignedComponent(r))
	R, S, err := ecdsa.Sign(rand.Reader, s.vcek, h[:])
	if err != nil {
		return nil, err
	}
	if err := abi.SetSignature(R, S, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Save writes what a separate process needs to act as this platform: the
// cert table (the VCEK key is go-sev-guest's fixed test key) and settings.
func (s *SNP) Save(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "snp-certtable.bin"), s.certTable, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "snp-settings"), fmt.Appendf(nil, "%s %d %d %x %x", s.Product, s.Version, s.VMPL, s.HostData[:], s.chipID[:]), 0o600)
}

// LoadSNP is the counterpart of Save, for the process under test.
func LoadSNP(dir string) (*SNP, error) {
	table, err := os.ReadFile(filepath.Join(dir, "snp-certtable.bin"))
	if err != nil {
		return nil, err
	}
	settings, err := os.ReadFile(filepath.Join(dir, "snp-settings"))
	if err != nil {
		return nil, err
	}
	s := &SNP{certTable: table, vcek: sgtest.DefaultVcek()}
	var host, chip []byte
	if _, err := fmt.Sscanf(string(settings), "%s %d %d %x %x", &s.Product, &s.Version, &s.VMPL, &host, &chip); err != nil {
		return nil, fmt.Errorf("fakehw: snp settings: %w", err)
	}
	copy(s.HostData[:], host)
	copy(s.chipID[:], chip)
	return s, nil
}
