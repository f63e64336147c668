// Package attester produces TEE evidence bound to caller-chosen report data.
//
// An Attester knows nothing about HTTP or the KBS protocol: kbsclient computes
// the binding digest (spec: kbs-protocol.md, "report_data binding") and hands
// it over; the attester places it in its evidence the way its verifier
// expects (unpadded for sample, zero-padded to 64 bytes for TDX and SNP).
package attester

import (
	"context"
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
