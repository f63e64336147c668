package fakehw

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/testing/testdata"
)

// TDX is a simulated TDX platform. It takes go-tdx-guest's recorded sample
// quote and re-signs it for any report data under a throwaway Intel-shaped
// PKI: root "Intel SGX Root CA" → "Intel SGX PCK Platform CA" → a PCK leaf
// that carries the original SGX extensions; a fresh attestation key (AK)
// signs header+body, the PCK key signs the QE report, and the QE report
// binds SHA-256(AK ‖ QE auth data) as go-tdx-guest's verifier checks.
type TDX struct {
	MrConfigID [48]byte
	// FlipReportData makes the "hardware" misbehave: the quote carries
	// report data that differs from the request in one bit.
	FlipReportData bool
	// RTMR, when set, are the TD's runtime registers, quoted as they are.
	RTMR *RTMR

	rootDER, interDER, pckDER []byte
	pckKey, akKey             *ecdsa.PrivateKey

	mu    sync.Mutex
	calls int
}

// pem blocks, and the SGX extension OID whose value is copied from Intel's PCK cert.
var (
	oidSGX         = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidCRL         = asn1.ObjectIdentifier{2, 5, 29, 31}
	notBeforeSlack = time.Hour
)

// NewTDX builds a fresh throwaway PKI and attestation key.
func NewTDX() (*TDX, error) {
	q, err := sampleQuote()
	if err != nil {
		return nil, err
	}
	intelPCK, err := pckFromQuote(q)
	if err != nil {
		return nil, err
	}
	var extra []pkix.Extension
	for _, e := range intelPCK.Extensions {
		if e.Id.Equal(oidSGX) || e.Id.Equal(oidCRL) {
			extra = append(extra, e)
		}
	}
	if len(extra) != 2 {
		return nil, errors.New("fakehw: sample PCK cert lacks SGX/CRL extensions")
	}
	now := time.Now()
	newKey := func() *ecdsa.PrivateKey { k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); return k }
	rootKey, interKey, pckKey := newKey(), newKey(), newKey()
	mk := func(serial int64, cn string, ca bool, parent *x509.Certificate, pub, signer *ecdsa.PrivateKey, exts []pkix.Extension) ([]byte, *x509.Certificate, error) {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}},
			NotBefore: now.Add(-notBeforeSlack), NotAfter: now.Add(24 * time.Hour),
			SignatureAlgorithm: x509.ECDSAWithSHA256, BasicConstraintsValid: true, IsCA: ca,
			SubjectKeyId: []byte(cn)[:8], ExtraExtensions: exts,
		}
		if ca {
			tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		} else {
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &pub.PublicKey, signer)
		if err != nil {
			return nil, nil, err
		}
		c, err := x509.ParseCertificate(der)
		return der, c, err
	}
	rootDER, root, err := mk(1, "Intel SGX Root CA", true, nil, rootKey, rootKey, nil)
	if err != nil {
		return nil, err
	}
	interDER, inter, err := mk(2, "Intel SGX PCK Platform CA", true, root, interKey, rootKey, nil)
	if err != nil {
		return nil, err
	}
	pckDER, _, err := mk(3, "Intel SGX PCK Certificate", false, inter, pckKey, interKey, extra)
	if err != nil {
		return nil, err
	}
	return &TDX{rootDER: rootDER, interDER: interDER, pckDER: pckDER, pckKey: pckKey, akKey: newKey()}, nil
}

func sampleQuote() (*pb.QuoteV4, error) {
	q, err := abi.QuoteToProto(testdata.RawQuote)
	if err != nil {
		return nil, err
	}
	v4, ok := q.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("fakehw: sample quote is %T", q)
	}
	return v4, nil
}

func pckFromQuote(q *pb.QuoteV4) (*x509.Certificate, error) {
	chain := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	b, _ := pem.Decode(chain)
	if b == nil {
		return nil, errors.New("fakehw: no PCK cert in sample quote")
	}
	return x509.ParseCertificate(b.Bytes)
}

// RootPEM is the trust anchor a verifier needs.
func (t *TDX) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: t.rootDER})
}

// Calls counts Quote calls.
func (t *TDX) Calls() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls
}

// Quote implements tdx.Provider.
func (t *TDX) Quote(ctx context.Context, rd [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.calls++
	t.mu.Unlock()
	q, err := sampleQuote()
	if err != nil {
		return nil, err
	}
	if t.FlipReportData {
		rd[0] ^= 1
	}
	q.TdQuoteBody.ReportData = rd[:]
	q.TdQuoteBody.MrConfigId = t.MrConfigID[:]
	if t.RTMR != nil {
		if q.TdQuoteBody.Rtmrs, err = t.RTMR.Values(); err != nil {
			return nil, err
		}
	}

	sd := q.SignedData
	qe := sd.CertificationData.QeReportCertificationData
	// New PCK chain; every enclosing size field grows by the same delta.
	chain := append(append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: t.pckDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: t.interDER})...),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: t.rootDER})...)
	delta := int64(len(chain)) - int64(len(qe.PckCertificateChainData.PckCertChain))
	qe.PckCertificateChainData.PckCertChain = chain
	qe.PckCertificateChainData.Size = uint32(len(chain))
	sd.CertificationData.Size = uint32(int64(sd.CertificationData.Size) + delta)
	q.SignedDataSize = uint32(int64(q.SignedDataSize) + delta)

	// Attestation key, bound into the QE report, which the PCK key signs.
	ak := append(t.akKey.X.FillBytes(make([]byte, 32)), t.akKey.Y.FillBytes(make([]byte, 32))...)
	sd.EcdsaAttestationKey = ak
	h := sha256.Sum256(append(append([]byte(nil), ak...), qe.QeAuthData.Data...))
	qe.QeReport.ReportData = append(h[:], make([]byte, 32)...)
	qeRaw, err := abi.EnclaveReportToAbiBytes(qe.QeReport)
	if err != nil {
		return nil, err
	}
	if qe.QeReportSignature, err = signRaw(t.pckKey, qeRaw); err != nil {
		return nil, err
	}
	// The AK signs header ‖ body.
	hdr, err := abi.HeaderToAbiBytes(q.Header)
	if err != nil {
		return nil, err
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.TdQuoteBody)
	if err != nil {
		return nil, err
	}
	if sd.Signature, err = signRaw(t.akKey, append(hdr, body...)); err != nil {
		return nil, err
	}
	return abi.QuoteToAbiBytes(q)
}

// signRaw signs SHA-256(msg) and returns r ‖ s, 32 bytes each.
func signRaw(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		return nil, err
	}
	return append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...), nil
}

// Save writes the simulator's keys and certificates for another process.
func (t *TDX) Save(dir string) error {
	files := map[string][]byte{
		"tdx-root.der": t.rootDER, "tdx-inter.der": t.interDER, "tdx-pck.der": t.pckDER,
		"tdx-mrconfigid": t.MrConfigID[:],
	}
	if t.FlipReportData {
		files["tdx-flip-report-data"] = nil
	}
	for name, k := range map[string]*ecdsa.PrivateKey{"tdx-pck.key": t.pckKey, "tdx-ak.key": t.akKey} {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return err
		}
		files[name] = der
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// LoadTDX is the counterpart of Save.
func LoadTDX(dir string) (*TDX, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	t := &TDX{RTMR: &RTMR{Dir: dir}}
	var err error
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{"tdx-root.der", &t.rootDER}, {"tdx-inter.der", &t.interDER}, {"tdx-pck.der", &t.pckDER}} {
		if *f.dst, err = read(f.name); err != nil {
			return nil, err
		}
	}
	mr, err := read("tdx-mrconfigid")
	if err != nil {
		return nil, err
	}
	copy(t.MrConfigID[:], mr)
	if _, err := os.Stat(filepath.Join(dir, "tdx-flip-report-data")); err == nil {
		t.FlipReportData = true
	}
	for name, dst := range map[string]**ecdsa.PrivateKey{"tdx-pck.key": &t.pckKey, "tdx-ak.key": &t.akKey} {
		der, err := read(name)
		if err != nil {
			return nil, err
		}
		if *dst, err = x509.ParseECPrivateKey(der); err != nil {
			return nil, err
		}
	}
	return t, nil
}
