package kbs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/snp"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func digest48(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }

func TestVerifyTDX(t *testing.T) {
	hw, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	copy(hw.MrConfigID[:], digest48(9))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(hw.RootPEM())
	ev, err := tdx.New(hw, tdx.Options{}).Evidence(context.Background(), digest48(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyTDX(ev, digest48(1), digest48(9), roots, time.Now()); err != nil {
		t.Fatalf("genuine quote rejected: %v", err)
	}
	for name, tc := range map[string]struct {
		ev     json.RawMessage
		digest []byte
		init   []byte
		roots  *x509.CertPool
		want   string
	}{
		"report_data mismatch": {ev: ev, digest: digest48(2), roots: roots, want: "report_data does not match"},
		"init-data mismatch":   {ev: ev, digest: digest48(1), init: digest48(8), roots: roots, want: "MRCONFIGID"},
		"untrusted root":       {ev: ev, digest: digest48(1), roots: x509.NewCertPool(), want: "signature chain"},
		"tampered body":        {ev: tamperQuote(t, ev, 48+100), digest: digest48(1), roots: roots, want: "signature chain"},
		"garbage event log":    {ev: json.RawMessage(strings.Replace(string(ev), `"cc_eventlog":null`, `"cc_eventlog":"AA=="`, 1)), digest: digest48(1), roots: roots, want: "parse CC eventlog"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verifyTDX(tc.ev, tc.digest, tc.init, tc.roots, time.Now())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func tamperQuote(t *testing.T, ev json.RawMessage, off int) json.RawMessage {
	t.Helper()
	var e tdx.Evidence
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	q, _ := base64.StdEncoding.DecodeString(e.Quote)
	q[off] ^= 1
	e.Quote = base64.StdEncoding.EncodeToString(q)
	out, _ := json.Marshal(e)
	return out
}

func TestVerifySNP(t *testing.T) {
	hw, err := fakehw.NewSNP("Genoa")
	if err != nil {
		t.Fatal(err)
	}
	copy(hw.HostData[:], digest48(9))
	ev, err := snp.New(hw).Evidence(context.Background(), digest48(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifySNP(ev, digest48(1), digest48(9), hw.TrustedRoots(), time.Now()); err != nil {
		t.Fatalf("genuine report rejected: %v", err)
	}
	other, _ := fakehw.NewSNP("Milan")
	variant := func(mod func(*snp.Evidence)) []byte {
		var e snp.Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			t.Fatal(err)
		}
		mod(&e)
		out, _ := json.Marshal(e)
		return out
	}
	tampered := variant(func(e *snp.Evidence) { e.AttestationReport.Measurement[0] ^= 1 })
	emptyChain := variant(func(e *snp.Evidence) { e.CertChain = []snp.CertEntry{} })
	hw.VMPL = 2
	vmpl2, err := hw.RawReport([64]byte(append(digest48(1), make([]byte, 16)...)))
	if err != nil {
		t.Fatal(err)
	}
	vmplEv := variant(func(e *snp.Evidence) { e.AttestationReport, _ = snp.ParseReport(vmpl2) })
	for name, tc := range map[string]struct {
		ev     []byte
		digest []byte
		init   []byte
		want   string
	}{
		"report_data mismatch": {ev: ev, digest: digest48(2), want: "report_data does not match"},
		"init-data mismatch":   {ev: ev, digest: digest48(1), init: digest48(8), want: "HOSTDATA"},
		"tampered report":      {ev: tampered, digest: digest48(1), want: "signature"},
		"empty cert chain":     {ev: emptyChain, digest: digest48(1), want: "must include a VCEK"},
		"vmpl 2":               {ev: vmplEv, digest: digest48(1), want: "VMPL"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verifySNP(tc.ev, tc.digest, tc.init, hw.TrustedRoots(), time.Now())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := verifySNP(ev, digest48(1), nil, other.TrustedRoots(), time.Now()); err == nil {
		t.Fatal("verified under another product's roots")
	}
}
