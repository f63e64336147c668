// Package sample implements the development-only "sample" attester. Its
// evidence carries no signature: a KBS accepts it only under a policy that
// allows sample evidence (Trustee's default policy denies it).
package sample

import (
	"context"
	"encoding/base64"
	"encoding/json"

	"github.com/cdh-proxy/cdh-proxy/attester"
)

// Tee is the KBS tee name of the sample attester.
const Tee = "sample"

// Evidence is the sample evidence shape (spec: kbs-protocol.md, "Primary evidence shapes").
type Evidence struct {
	SVN        string `json:"svn"`
	ReportData string `json:"report_data"` // standard base64, padded; the digest unpadded
}

// Attester is the sample attester. The zero value is ready to use.
type Attester struct{}

var _ attester.Attester = Attester{}

// Tee implements attester.Attester.
func (Attester) Tee() string { return Tee }

// Evidence implements attester.Attester. The report data is embedded as is:
// the sample verifier compares it with the binding digest byte for byte.
func (Attester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return json.Marshal(Evidence{SVN: "1", ReportData: base64.StdEncoding.EncodeToString(reportData)})
}
