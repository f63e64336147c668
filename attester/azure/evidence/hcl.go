// Package evidence is the wire format of Azure vTPM evidence (Trustee's
// az-snp-vtpm and az-tdx-vtpm): the evidence JSON, the paravisor's HCL
// report and its runtime claims. It parses and encodes, and does no I/O, so
// the attester and a verifier share one definition of the bytes.
package evidence

import (
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// HCL report layout (little-endian), from the paravisor's IGVM attestation
// report: a 32-byte header, the hardware report, then the runtime claims.
const (
	hclHeaderSize   = 32
	hwReportSize    = 1184
	claimsOffset    = hclHeaderSize + hwReportSize // 1216
	varDataOffset   = claimsOffset + 20            // 1236
	reportTypeSNP   = 2
	reportTypeTDX   = 4
	hashTypeSHA256  = 1
	snpReportData   = 0x50 // report_data inside an SNP report
	tdReportData    = 128  // REPORTDATA inside a TDREPORT (after REPORTMACSTRUCT's header fields)
	tdReportSize    = 1024
	userDataHexSize = 128
)

// ErrNotHCLReport means the bytes are not an HCL report (bad signature or
// truncated): the machine is not an Azure CVM or the NV index is something
// else.
var ErrNotHCLReport = errors.New("not an HCL report")

// HCLReport is a parsed HCL report. Raw keeps every byte (trailing zeros
// included), as it is sent.
type HCLReport struct {
	Raw        []byte
	ReportType uint32 // 2 SNP, 4 TDX
	HWReport   []byte // the 1184-byte hardware report area
	VarData    []byte // the runtime-claims JSON, exactly as hashed
}

// ParseHCLReport checks the layout and splits the report.
func ParseHCLReport(raw []byte) (*HCLReport, error) {
	if len(raw) < varDataOffset || string(raw[:4]) != "HCLA" {
		return nil, ErrNotHCLReport
	}
	le := binary.LittleEndian
	r := &HCLReport{Raw: raw, ReportType: le.Uint32(raw[claimsOffset+8:])}
	if r.ReportType != reportTypeSNP && r.ReportType != reportTypeTDX {
		return nil, fmt.Errorf("HCL report type %d: want 2 (SEV-SNP) or 4 (TDX)", r.ReportType)
	}
	if h := le.Uint32(raw[claimsOffset+12:]); h != hashTypeSHA256 {
		return nil, fmt.Errorf("HCL report hash type %d: want 1 (SHA-256)", h)
	}
	n := le.Uint32(raw[claimsOffset+16:])
	if uint64(n) > uint64(len(raw)-varDataOffset) {
		return nil, fmt.Errorf("HCL report var data size %d exceeds the report (%d bytes)", n, len(raw))
	}
	r.HWReport = raw[hclHeaderSize:claimsOffset]
	r.VarData = raw[varDataOffset : varDataOffset+int(n)]
	return r, nil
}

// Tee is the KBS tee name for the report's hardware.
func (r *HCLReport) Tee() string {
	if r.ReportType == reportTypeTDX {
		return TeeTDX
	}
	return TeeSNP
}

// HWReportData is the report_data field of the hardware report, which
// binds the var data: SHA-256(VarData) ‖ 32 zero bytes.
func (r *HCLReport) HWReportData() []byte {
	if r.ReportType == reportTypeTDX {
		return r.HWReport[tdReportData : tdReportData+64]
	}
	return r.HWReport[snpReportData : snpReportData+64]
}

// TDReport is the 1024-byte TDREPORT (TDX only).
func (r *HCLReport) TDReport() []byte { return r.HWReport[:tdReportSize] }

// Consistent reports whether the hardware report binds the var data. A
// report read while the paravisor rewrites the NV index can mix two
// generations; it fails this check.
func (r *HCLReport) Consistent() bool {
	sum := sha256.Sum256(r.VarData)
	rd := r.HWReportData()
	if string(rd[:32]) != string(sum[:]) {
		return false
	}
	for _, b := range rd[32:] {
		if b != 0 {
			return false
		}
	}
	return true
}

// Claims are the runtime claims in the var data (the members used here).
type Claims struct {
	Keys     []JWK  `json:"keys"`
	UserData string `json:"user-data"`
}

// JWK is one key of the runtime claims.
type JWK struct {
	Kid string `json:"kid"`
	Kty string `json:"kty"`
	E   string `json:"e"`
	N   string `json:"n"`
}

// Claims parses the var data.
func (r *HCLReport) Claims() (*Claims, error) {
	var c Claims
	if err := json.Unmarshal(r.VarData, &c); err != nil {
		return nil, fmt.Errorf("HCL runtime claims: %w", err)
	}
	return &c, nil
}

// UserDataFor is the user-data claim the paravisor writes for runtime data
// rd: uppercase hex of rd zero-padded to 64 bytes.
func UserDataFor(rd []byte) string {
	var p [64]byte
	copy(p[:], rd)
	return strings.ToUpper(hex.EncodeToString(p[:]))
}

// AKPub is the HCLAkPub key of the claims: the vTPM attestation key the
// paravisor vouches for.
func (c *Claims) AKPub() (*rsa.PublicKey, error) {
	for _, k := range c.Keys {
		if k.Kid != "HCLAkPub" {
			continue
		}
		if k.Kty != "RSA" {
			return nil, fmt.Errorf("HCLAkPub kty %q, want RSA", k.Kty)
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
			return nil, errors.New("HCLAkPub: bad n or e")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
	}
	return nil, errors.New("runtime claims carry no HCLAkPub key")
}
