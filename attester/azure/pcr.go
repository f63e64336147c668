package azure

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// PCRs are the vTPM's SHA-256 PCRs as runtime measurement registers; the
// event log names a PCR by its own number.
type PCRs struct{ dev *Device }

var (
	_ attester.Registers = PCRs{}
	_ attester.Measurer  = (*Attester)(nil)
)

// RuntimeRegisters implements attester.Measurer.
func (a *Attester) RuntimeRegisters() (attester.Registers, error) { return PCRs{a.dev}, nil }

// Hash implements attester.Registers: the vTPM's SHA-256 bank.
func (PCRs) Hash() crypto.Hash { return crypto.SHA256 }

// Register implements attester.Registers.
func (PCRs) Register(pcr uint64) (uint32, error) {
	if pcr > 23 {
		return 0, fmt.Errorf("the vTPM has PCR 0-23, not %d", pcr)
	}
	return uint32(pcr), nil
}

// Read implements attester.Registers.
func (p PCRs) Read(ctx context.Context, reg uint32) ([]byte, error) {
	var v []byte
	err := p.dev.with(ctx, func(t transport.TPM) error {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(uint(reg))}.Execute(t)
		if err != nil {
			return fmt.Errorf("read PCR%d: %w", reg, err)
		}
		if len(rsp.PCRValues.Digests) != 1 {
			return fmt.Errorf("read PCR%d: the vTPM returned %d values", reg, len(rsp.PCRValues.Digests))
		}
		v = rsp.PCRValues.Digests[0].Buffer
		return nil
	})
	return v, err
}

// Extend implements attester.Registers. PCR 17-22 belong to dynamic
// launch: a TPM accepts their extends only from higher localities, and
// Azure's vTPM refuses PCR 17, aa.toml's default init_pcr, from the
// guest.
func (p PCRs) Extend(ctx context.Context, reg uint32, digest []byte) error {
	if len(digest) != 32 {
		return fmt.Errorf("extend PCR%d: digest of %d bytes, want 32", reg, len(digest))
	}
	return p.dev.with(ctx, func(t transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(reg), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
		}.Execute(t)
		if errors.Is(err, tpm2.TPMRCLocality) {
			return fmt.Errorf("extend PCR%d: the vTPM refuses it from the guest's locality (PCR 17-22 are dynamic-launch PCRs); measure into PCR 23 instead: aa.toml [eventlog_config] init_pcr = 23: %w", reg, err)
		}
		if err != nil {
			return fmt.Errorf("extend PCR%d: %w", reg, err)
		}
		return nil
	})
}
