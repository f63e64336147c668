// Package attester produces TEE evidence bound to caller-chosen report data.
//
// An Attester knows nothing about HTTP or the KBS protocol: kbsclient computes
// the binding digest (spec: kbs-protocol.md, "report_data binding") and hands
// it over; the attester places it in its evidence the way its verifier
// expects (unpadded for sample, zero-padded to 64 bytes for TDX and SNP).
package attester

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
)

// Attester produces evidence for one TEE type.
type Attester interface {
	// Tee is the KBS tee name sent in the auth request ("sample", "tdx", "snp", …).
	Tee() string
	// Evidence returns the primary evidence JSON with reportData bound into it.
	Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error)
}

// ErrReportDataTooLong is returned when the report data does not fit the
// hardware field (64 bytes for TDX and SNP).
var ErrReportDataTooLong = errors.New("attester: report data longer than 64 bytes")

// Registers are a TEE's runtime measurement registers (TDX RTMRs, vTPM
// PCRs), as the attestation agent's event log extends them.
type Registers interface {
	// Hash is the register bank's hash: what an extend folds with and
	// the event log's digests are computed with.
	Hash() crypto.Hash
	// Register maps a PCR number (aa.toml init_pcr, a request's
	// RegisterIndex) to the register extended for it, numbered as the
	// event log records it (TDX: CC measurement register 1-4 for
	// RTMR0-3; vTPM: the PCR itself).
	Register(pcr uint64) (uint32, error)
	// Read returns the register's value.
	Read(ctx context.Context, reg uint32) ([]byte, error)
	// Extend folds digest (Hash().Size() bytes) into the register.
	Extend(ctx context.Context, reg uint32, digest []byte) error
}

// Measurer is implemented by attesters whose TEE may have runtime
// measurement registers.
type Measurer interface {
	// RuntimeRegisters returns the registers, or an error saying why this
	// guest has none (the kernel lacks the interface, …).
	RuntimeRegisters() (Registers, error)
}
