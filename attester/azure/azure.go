// Package azure produces the evidence of Azure confidential VMs, where the
// paravisor (HCL) exposes the SEV-SNP or TDX hardware report through the
// vTPM instead of a guest device: Trustee's tee types az-snp-vtpm and
// az-tdx-vtpm (docs/azure.md). The wire format is in package evidence.
package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
)

// KBS tee names.
const (
	TeeSNP = evidence.TeeSNP
	TeeTDX = evidence.TeeTDX
)

// DefaultTPM is the kernel's TPM resource manager.
const DefaultTPM = "/dev/tpmrm0"

// Device is the vTPM and the metadata service of one Azure CVM. Build one
// per process: it serializes the whole evidence sequence (runtime-data
// write, report refresh, quote), which must not interleave.
type Device struct {
	tpmPath      string
	imds         string
	http         *http.Client
	pollTimeout  time.Duration
	pollInterval time.Duration

	// busy serializes whole sequences; a channel so a waiting caller can
	// give up with its context. It also guards vcekDER.
	busy    chan struct{}
	vcekDER []byte
}

// Options configure a Device; zero values are Azure's.
type Options struct {
	// TPM is the TPM character device, or a unix socket speaking the TPM
	// command protocol (swtpm's unixio server, for tests).
	TPM string
	// IMDS is the metadata service base URL.
	IMDS string
	// PollTimeout bounds the wait for the paravisor's refreshed report.
	PollTimeout time.Duration
}

// NewDevice returns a Device; nothing is opened until used.
func NewDevice(o Options) *Device {
	d := &Device{tpmPath: o.TPM, imds: o.IMDS, http: newIMDSClient(), pollTimeout: o.PollTimeout, pollInterval: 20 * time.Millisecond, busy: make(chan struct{}, 1)}
	if d.tpmPath == "" {
		d.tpmPath = DefaultTPM
	}
	if d.imds == "" {
		d.imds = DefaultIMDS
	}
	if d.pollTimeout <= 0 {
		d.pollTimeout = 5 * time.Second
	}
	return d
}

// lock waits for the device, or for ctx to end.
func (d *Device) lock(ctx context.Context) error {
	select {
	case d.busy <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the vTPM: %w", ctx.Err())
	}
}

func (d *Device) unlock() { <-d.busy }

// open opens the TPM for one sequence; closing it after each sequence
// keeps no TPM session or connection across attestations.
func (d *Device) open() (transport.TPMCloser, error) {
	fi, err := os.Stat(d.tpmPath)
	if err != nil {
		return nil, fmt.Errorf("TPM %s: %w", d.tpmPath, err)
	}
	if fi.Mode()&os.ModeSocket != 0 {
		return linuxudstpm.Open(d.tpmPath)
	}
	t, err := linuxtpm.Open(d.tpmPath)
	if err != nil {
		return nil, fmt.Errorf("TPM %s: %w", d.tpmPath, err)
	}
	return t, nil
}

// with runs fn on the vTPM, opened for it, holding the device.
func (d *Device) with(ctx context.Context, fn func(transport.TPM) error) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	t, err := d.open()
	if err != nil {
		return err
	}
	defer t.Close()
	return fn(t)
}

// ErrNotAzureCVM means the TPM has no readable HCL report.
var ErrNotAzureCVM = errors.New("no Azure CVM vTPM: HCL report NV index 0x01400001 not readable")

// Detect reads the HCL report and returns the tee it describes.
func (d *Device) Detect(ctx context.Context) (string, error) {
	if err := d.lock(ctx); err != nil {
		return "", err
	}
	defer d.unlock()
	t, err := d.open()
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrNotAzureCVM, err)
	}
	defer t.Close()
	raw, err := ReadNV(t, NVIndexHCLReport)
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrNotAzureCVM, err)
	}
	r, err := evidence.ParseHCLReport(raw)
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrNotAzureCVM, err)
	}
	return r.Tee(), nil
}

// TPMPath is where the device's TPM is.
func (d *Device) TPMPath() string { return d.tpmPath }

// Attester produces az-snp-vtpm or az-tdx-vtpm evidence.
type Attester struct {
	dev     *Device
	tee     string
	version int
}

var _ attester.Attester = (*Attester)(nil)

// New returns the attester for tee (TeeSNP or TeeTDX) on dev, producing
// evidence version 2 (Trustee ≥ 0.21) or 1 (Trustee 0.18–0.20).
func New(dev *Device, tee string, version int) (*Attester, error) {
	if tee != TeeSNP && tee != TeeTDX {
		return nil, fmt.Errorf("unknown Azure tee %q", tee)
	}
	if version != 1 && version != 2 {
		return nil, fmt.Errorf("Azure evidence version %d: want 1 or 2", version)
	}
	return &Attester{dev: dev, tee: tee, version: version}, nil
}

// Tee implements attester.Attester.
func (a *Attester) Tee() string { return a.tee }

// Evidence implements attester.Attester: rd (the binding digest, unpadded)
// goes to the paravisor, which binds it into a fresh HCL report, and is the
// TPM quote's qualifying data.
func (a *Attester) Evidence(ctx context.Context, rd []byte) (json.RawMessage, error) {
	if len(rd) > 64 {
		return nil, attester.ErrReportDataTooLong
	}
	d := a.dev
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.unlock()
	t, err := d.open()
	if err != nil {
		return nil, err
	}
	defer t.Close()

	chunk := nvBufferMax(t)
	if err := writeRuntimeData(t, chunk, rd); err != nil {
		return nil, err
	}
	hcl, err := d.freshReport(ctx, t, chunk, rd)
	if err != nil {
		return nil, err
	}
	if hcl.Tee() != a.tee {
		return nil, fmt.Errorf("HCL report is %s, attester is %s", hcl.Tee(), a.tee)
	}
	msg, sig, pcrs, err := quoteWithPCRs(t, rd)
	if err != nil {
		return nil, err
	}
	ev := evidence.Evidence{Version: a.version, TPMQuote: evidence.TPMQuote{Signature: sig, Message: msg}, HCLReport: hcl.Raw}
	for _, p := range pcrs {
		ev.TPMQuote.PCRs = append(ev.TPMQuote.PCRs, p)
	}
	switch a.tee {
	case TeeSNP:
		if ev.VCEK, err = d.vcek(ctx); err != nil {
			return nil, err
		}
	case TeeTDX:
		if ev.TDQuote, err = d.tdQuote(ctx, hcl.TDReport()); err != nil {
			return nil, err
		}
	}
	return json.Marshal(ev)
}

// freshReport polls the HCL report until the paravisor has bound rd into
// it: user-data matches and the hardware report binds the claims (a read
// racing the paravisor's rewrite can mix two reports).
func (d *Device) freshReport(ctx context.Context, t transport.TPM, chunk int, rd []byte) (*evidence.HCLReport, error) {
	want := evidence.UserDataFor(rd)
	nv, err := openNV(t, NVIndexHCLReport)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.pollTimeout)
	defer cancel()
	var last error
	for {
		raw, err := nv.read(t, chunk)
		if err != nil {
			return nil, err
		}
		r, err := evidence.ParseHCLReport(raw)
		if err == nil {
			var c *evidence.Claims
			if c, err = r.Claims(); err == nil {
				switch {
				case !strings.EqualFold(c.UserData, want):
					err = errors.New("user-data is not the runtime data yet")
				case !r.Consistent():
					err = errors.New("hardware report does not bind the runtime claims")
				default:
					return r, nil
				}
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("paravisor did not refresh the HCL report within %s: %v", d.pollTimeout, last)
		case <-time.After(d.pollInterval):
		}
	}
}

// ErrInitDataAlgorithm means the initdata does not use sha256.
var ErrInitDataAlgorithm = errors.New("Azure vTPM attesters bind init-data through PCR8 (SHA-256), so initdata must say algorithm = \"sha256\"")

// BindInitData measures the init-data digest into PCR8, which the verifier
// compares with SHA-256(32 zero bytes ‖ digest). Azure's vTPM measures
// SHA-256 only, so the initdata algorithm must be sha256.
func (a *Attester) BindInitData(ctx context.Context, algorithm string, digest []byte) (extended bool, err error) {
	if algorithm != "sha256" || len(digest) != 32 {
		return false, fmt.Errorf("initdata algorithm %q: %w", algorithm, ErrInitDataAlgorithm)
	}
	err = a.dev.with(ctx, func(t transport.TPM) error {
		extended, err = extendInitData(t, digest)
		return err
	})
	return extended, err
}
