package evidence

import (
	"strings"
	"testing"
)

// FuzzParse feeds hostile evidence and HCL reports (a lying paravisor, a
// corrupted NV index) through every parser: errors, never panics.
func FuzzParse(f *testing.F) {
	// Small seeds keep the fuzzer's input minimization cheap; the recorded
	// vectors (kilobytes) are covered by the golden tests.
	hcl := make([]byte, varDataOffset)
	copy(hcl, "HCLA")
	claims := `{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAB","n":"3q2-7w"}],"user-data":"00"}`
	hcl[claimsOffset+8], hcl[claimsOffset+12], hcl[claimsOffset+16] = reportTypeSNP, hashTypeSHA256, byte(len(claims))
	f.Add(append(hcl, claims...))
	pcrs := `"` + strings.Repeat("00", 32) + `"` + strings.Repeat(`,"`+strings.Repeat("00", 32)+`"`, 23)
	f.Add([]byte(`{"version":2,"tpm_quote":{"signature":"00","message":"00","pcrs":[` + pcrs + `]},"hcl_report":"SENMQQ==","vcek":"AA=="}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, tee := range []string{TeeSNP, TeeTDX} {
			if ev, err := ParseEvidence(tee, data); err == nil && len(ev.TPMQuote.PCRs) != 24 {
				t.Fatalf("accepted %d PCRs", len(ev.TPMQuote.PCRs))
			}
		}
		r, err := ParseHCLReport(data)
		if err != nil {
			return
		}
		_ = r.Consistent()
		_ = r.HWReportData()
		_ = r.TDReport()
		if c, err := r.Claims(); err == nil {
			if k, err := c.AKPub(); err == nil && (k.N == nil || k.E < 0) {
				t.Fatal("AKPub accepted a broken key")
			}
		}
	})
}
