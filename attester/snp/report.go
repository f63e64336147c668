package snp

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// ReportSize is the size of a raw SEV-SNP attestation report.
const ReportSize = 0x4A0

// Report is the serde JSON of the virtee sev crate's AttestationReport, the
// shape Trustee's verifier parses and re-encodes to raw bytes before checking
// the signature (spec kbs-protocol.md, "Primary evidence shapes"). Field
// order follows the recorded Trustee evidence; comments give raw offsets.
type Report struct {
	Version          uint32    `json:"version"`                      // 0x00
	GuestSVN         uint32    `json:"guest_svn"`                    // 0x04
	Policy           uint64    `json:"policy"`                       // 0x08
	FamilyID         Bytes     `json:"family_id"`                    // 0x10 [16]
	ImageID          Bytes     `json:"image_id"`                     // 0x20 [16]
	VMPL             uint32    `json:"vmpl"`                         // 0x30
	SigAlgo          uint32    `json:"sig_algo"`                     // 0x34
	CurrentTCB       TCB       `json:"current_tcb"`                  // 0x38
	PlatInfo         uint64    `json:"plat_info"`                    // 0x40
	KeyInfo          uint32    `json:"key_info"`                     // 0x48
	ReportData       Bytes     `json:"report_data"`                  // 0x50 [64]
	Measurement      Bytes     `json:"measurement"`                  // 0x90 [48]
	HostData         Bytes     `json:"host_data"`                    // 0xC0 [32]
	IDKeyDigest      Bytes     `json:"id_key_digest"`                // 0xE0 [48]
	AuthorKeyDigest  Bytes     `json:"author_key_digest"`            // 0x110 [48]
	ReportID         Bytes     `json:"report_id"`                    // 0x140 [32]
	ReportIDMA       Bytes     `json:"report_id_ma"`                 // 0x160 [32]
	ReportedTCB      TCB       `json:"reported_tcb"`                 // 0x180
	CPUIDFamID       *uint8    `json:"cpuid_fam_id"`                 // 0x188, null before v3
	CPUIDModID       *uint8    `json:"cpuid_mod_id"`                 // 0x189
	CPUIDStep        *uint8    `json:"cpuid_step"`                   // 0x18A
	ChipID           Bytes     `json:"chip_id"`                      // 0x1A0 [64]
	CommittedTCB     TCB       `json:"committed_tcb"`                // 0x1E0
	Current          FWVer     `json:"current"`                      // 0x1E8
	Committed        FWVer     `json:"committed"`                    // 0x1EC
	LaunchTCB        TCB       `json:"launch_tcb"`                   // 0x1F0
	LaunchMitVector  *uint64   `json:"launch_mit_vector,omitempty"`  // 0x1F8, v5+ (absent before, as recorded)
	CurrentMitVector *uint64   `json:"current_mit_vector,omitempty"` // 0x200, v5+
	Signature        Signature `json:"signature"`                    // 0x2A0
}

// TCB is the decoded 8-byte TCB version. Its byte layout depends on the CPU
// generation: Milan/Genoa bl=b0 tee=b1 snp=b6 ucode=b7; Turin fmc=b0 bl=b1
// tee=b2 snp=b3 ucode=b7.
type TCB struct {
	FMC        *uint8 `json:"fmc"` // Turin only; null otherwise
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// FWVer is a firmware version: raw bytes build, minor, major, reserved.
type FWVer struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
	Build uint8 `json:"build"`
}

// Signature holds r and s as raw little-endian 72-byte arrays.
type Signature struct {
	R Bytes `json:"r"`
	S Bytes `json:"s"`
}

// Bytes marshals as a JSON array of numbers, as serde does for [u8; N].
type Bytes []byte

// MarshalJSON implements json.Marshaler.
func (b Bytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, 2+4*len(b))
	out = append(out, '[')
	for i, v := range b {
		if i > 0 {
			out = append(out, ',')
		}
		out = fmt.Appendf(out, "%d", v)
	}
	return append(out, ']'), nil
}

// UnmarshalJSON implements json.Unmarshaler; each element must be 0..255.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var nums []uint8
	if err := json.Unmarshal(data, &nums); err != nil {
		return fmt.Errorf("byte array: %w", err)
	}
	*b = nums
	return nil
}

type generation int

const (
	milanOrGenoa generation = iota
	turin
)

// cpuGeneration picks the TCB layout from CPUID family/model (v3+ reports).
// Reports without CPUID (v2) predate Turin, so they use the Milan layout.
func cpuGeneration(version uint32, fam uint8) generation {
	if version >= 3 && fam == 0x1A {
		return turin
	}
	return milanOrGenoa
}

func decodeTCB(b []byte, g generation) TCB {
	if g == turin {
		fmc := b[0]
		return TCB{FMC: &fmc, Bootloader: b[1], TEE: b[2], SNP: b[3], Microcode: b[7]}
	}
	return TCB{Bootloader: b[0], TEE: b[1], SNP: b[6], Microcode: b[7]}
}

func encodeTCB(t TCB, g generation, b []byte) error {
	if g == turin {
		if t.FMC == nil {
			return errors.New("Turin TCB needs a numeric fmc")
		}
		b[0], b[1], b[2], b[3], b[7] = *t.FMC, t.Bootloader, t.TEE, t.SNP, t.Microcode
		return nil
	}
	if t.FMC != nil {
		return errors.New("fmc is only valid on Turin")
	}
	b[0], b[1], b[6], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
	return nil
}

// Only report versions 2 (produced by older firmware) to 5 are understood;
// Trustee accepts 3 to 5.
const minVersion, maxVersion = 2, 5

// ParseReport converts a raw report to its JSON form.
func ParseReport(raw []byte) (*Report, error) {
	if len(raw) < ReportSize {
		return nil, fmt.Errorf("snp report: %d bytes, want %d", len(raw), ReportSize)
	}
	raw = raw[:ReportSize]
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(raw[o:]) }
	le64 := func(o int) uint64 { return binary.LittleEndian.Uint64(raw[o:]) }
	cp := func(o, n int) Bytes { return append(Bytes(nil), raw[o:o+n]...) }
	r := &Report{
		Version: le32(0x00), GuestSVN: le32(0x04), Policy: le64(0x08),
		FamilyID: cp(0x10, 16), ImageID: cp(0x20, 16), VMPL: le32(0x30), SigAlgo: le32(0x34),
		PlatInfo: le64(0x40), KeyInfo: le32(0x48), ReportData: cp(0x50, 64), Measurement: cp(0x90, 48),
		HostData: cp(0xC0, 32), IDKeyDigest: cp(0xE0, 48), AuthorKeyDigest: cp(0x110, 48),
		ReportID: cp(0x140, 32), ReportIDMA: cp(0x160, 32), ChipID: cp(0x1A0, 64),
		Current:   FWVer{Build: raw[0x1E8], Minor: raw[0x1E9], Major: raw[0x1EA]},
		Committed: FWVer{Build: raw[0x1EC], Minor: raw[0x1ED], Major: raw[0x1EE]},
		Signature: Signature{R: cp(0x2A0, 72), S: cp(0x2E8, 72)},
	}
	if r.Version < minVersion || r.Version > maxVersion {
		return nil, fmt.Errorf("snp report version %d not supported (want %d..%d)", r.Version, minVersion, maxVersion)
	}
	if r.Version >= 3 {
		fam, mod, step := raw[0x188], raw[0x189], raw[0x18A]
		r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep = &fam, &mod, &step
	}
	g := cpuGeneration(r.Version, raw[0x188])
	r.CurrentTCB = decodeTCB(raw[0x38:0x40], g)
	r.ReportedTCB = decodeTCB(raw[0x180:0x188], g)
	r.CommittedTCB = decodeTCB(raw[0x1E0:0x1E8], g)
	r.LaunchTCB = decodeTCB(raw[0x1F0:0x1F8], g)
	if r.Version >= 5 {
		l, c := le64(0x1F8), le64(0x200)
		r.LaunchMitVector, r.CurrentMitVector = &l, &c
	}
	return r, nil
}

// Raw converts the JSON form back to the raw report, as the verifier does
// before it checks the signature. Every array must have its exact length.
func (r *Report) Raw() ([]byte, error) {
	if r.Version < minVersion || r.Version > maxVersion {
		return nil, fmt.Errorf("snp report version %d not supported", r.Version)
	}
	raw := make([]byte, ReportSize)
	put32 := func(o int, v uint32) { binary.LittleEndian.PutUint32(raw[o:], v) }
	put64 := func(o int, v uint64) { binary.LittleEndian.PutUint64(raw[o:], v) }
	var errs []error
	put := func(name string, o int, b Bytes, n int) {
		if len(b) != n {
			errs = append(errs, fmt.Errorf("%s: %d bytes, want %d", name, len(b), n))
			return
		}
		copy(raw[o:], b)
	}
	put32(0x00, r.Version)
	put32(0x04, r.GuestSVN)
	put64(0x08, r.Policy)
	put("family_id", 0x10, r.FamilyID, 16)
	put("image_id", 0x20, r.ImageID, 16)
	put32(0x30, r.VMPL)
	put32(0x34, r.SigAlgo)
	put64(0x40, r.PlatInfo)
	put32(0x48, r.KeyInfo)
	put("report_data", 0x50, r.ReportData, 64)
	put("measurement", 0x90, r.Measurement, 48)
	put("host_data", 0xC0, r.HostData, 32)
	put("id_key_digest", 0xE0, r.IDKeyDigest, 48)
	put("author_key_digest", 0x110, r.AuthorKeyDigest, 48)
	put("report_id", 0x140, r.ReportID, 32)
	put("report_id_ma", 0x160, r.ReportIDMA, 32)
	put("chip_id", 0x1A0, r.ChipID, 64)
	put("signature.r", 0x2A0, r.Signature.R, 72)
	put("signature.s", 0x2E8, r.Signature.S, 72)
	var fam uint8
	if r.Version >= 3 {
		if r.CPUIDFamID == nil || r.CPUIDModID == nil || r.CPUIDStep == nil {
			errs = append(errs, errors.New("cpuid_fam_id/cpuid_mod_id/cpuid_step required for version ≥ 3"))
		} else {
			fam = *r.CPUIDFamID
			raw[0x188], raw[0x189], raw[0x18A] = *r.CPUIDFamID, *r.CPUIDModID, *r.CPUIDStep
		}
	}
	g := cpuGeneration(r.Version, fam)
	for _, t := range []struct {
		name string
		tcb  TCB
		off  int
	}{{"current_tcb", r.CurrentTCB, 0x38}, {"reported_tcb", r.ReportedTCB, 0x180}, {"committed_tcb", r.CommittedTCB, 0x1E0}, {"launch_tcb", r.LaunchTCB, 0x1F0}} {
		if err := encodeTCB(t.tcb, g, raw[t.off:t.off+8]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
		}
	}
	raw[0x1E8], raw[0x1E9], raw[0x1EA] = r.Current.Build, r.Current.Minor, r.Current.Major
	raw[0x1EC], raw[0x1ED], raw[0x1EE] = r.Committed.Build, r.Committed.Minor, r.Committed.Major
	if r.Version >= 5 {
		if r.LaunchMitVector == nil || r.CurrentMitVector == nil {
			errs = append(errs, errors.New("launch_mit_vector/current_mit_vector required for version 5"))
		} else {
			put64(0x1F8, *r.LaunchMitVector)
			put64(0x200, *r.CurrentMitVector)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("snp report JSON: %w", err)
	}
	return raw, nil
}
