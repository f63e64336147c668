package tdx

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// MeasurementsDir is where Linux (≥ 6.16) exposes the TD's measurement
// registers: rtmr<N>:sha384 reads the register and a 48-byte write at
// offset 0 extends it.
const MeasurementsDir = "/sys/devices/virtual/misc/tdx_guest/measurements"

// ErrNoRTMR means the kernel offers no way to extend RTMRs.
var ErrNoRTMR = errors.New("this TDX guest's kernel has no RTMR interface (Linux ≥ 6.16 exposes it at " + MeasurementsDir + ")")

// RTMRs are the TD's runtime measurement registers RTMR0-3 through sysfs,
// numbered as the CC event log numbers them: register N is RTMR N-1.
type RTMRs struct {
	Dir string // "" → MeasurementsDir
}

var _ attester.Registers = RTMRs{}

// Hash implements attester.Registers: RTMRs are SHA-384.
func (RTMRs) Hash() crypto.Hash { return crypto.SHA384 }

// Register maps a PCR number to a CC measurement register as
// guest-components does (after td-shim and the UEFI CC spec): PCR 1 and
// 7 → 1 (RTMR0), 2-6 → 2, 8-15 → 3, anything else (0, 16-23, …) → 4
// (RTMR3, where init_pcr's default 17 lands).
func (RTMRs) Register(pcr uint64) (uint32, error) {
	switch {
	case pcr == 1 || pcr == 7:
		return 1, nil
	case pcr >= 2 && pcr <= 6:
		return 2, nil
	case pcr >= 8 && pcr <= 15:
		return 3, nil
	}
	return 4, nil
}

func (r RTMRs) file(reg uint32) (string, error) {
	if reg < 1 || reg > 4 {
		return "", fmt.Errorf("TDX has no CC measurement register %d (RTMRs are 1-4)", reg)
	}
	dir := r.Dir
	if dir == "" {
		dir = MeasurementsDir
	}
	return filepath.Join(dir, fmt.Sprintf("rtmr%d:sha384", reg-1)), nil
}

// Read implements attester.Registers.
func (r RTMRs) Read(_ context.Context, reg uint32) ([]byte, error) {
	name, err := r.file(reg)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read RTMR%d: %w", reg-1, err)
	}
	if len(b) != 48 {
		return nil, fmt.Errorf("read RTMR%d: %d bytes, want 48", reg-1, len(b))
	}
	return b, nil
}

// Extend implements attester.Registers: one 48-byte write at offset 0,
// which the kernel turns into TDG.MR.RTMR.EXTEND.
func (r RTMRs) Extend(_ context.Context, reg uint32, digest []byte) error {
	name, err := r.file(reg)
	if err != nil {
		return err
	}
	if len(digest) != 48 {
		return fmt.Errorf("extend RTMR%d: digest of %d bytes, want 48", reg-1, len(digest))
	}
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("extend RTMR%d: %w", reg-1, err)
	}
	if _, err := f.WriteAt(digest, 0); err != nil {
		f.Close()
		return fmt.Errorf("extend RTMR%d: %w", reg-1, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("extend RTMR%d: %w", reg-1, err)
	}
	return nil
}
