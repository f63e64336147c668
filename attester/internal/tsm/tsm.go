// Package tsm gets attestation reports through the kernel's configfs-tsm
// interface (/sys/kernel/config/tsm/report), the upstream path for both TDX
// and SEV-SNP guests. It wraps google/go-configfs-tsm: the library writes
// inblob and privlevel, reads outblob/auxblob, checks the generation counter
// (so a concurrent writer cannot hand us someone else's report) and removes
// the report entry afterwards.
package tsm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
)

// Provider names as the kernel reports them in the entry's "provider" file.
const (
	ProviderTDX = "tdx_guest"
	ProviderSNP = "sev_guest"
)

// ErrWrongProvider is returned when configfs-tsm is backed by another TEE.
var ErrWrongProvider = errors.New("configfs-tsm provider mismatch")

// Client gets reports from one configfs-tsm. Calls are serialized: the TEE
// firmware handles one request at a time and the kernel would only make
// concurrent callers retry.
type Client struct {
	fs       configfsi.Client
	provider string
	mu       sync.Mutex
}

// New returns a Client for the given configfs (nil → the real
// /sys/kernel/config) that insists on provider ("tdx_guest" or "sev_guest").
func New(fs configfsi.Client, provider string) (*Client, error) {
	if fs == nil {
		var err error
		if fs, err = linuxtsm.MakeClient(); err != nil {
			return nil, fmt.Errorf("configfs-tsm: %w", err)
		}
	}
	return &Client{fs: fs, provider: provider}, nil
}

// Request is one report request.
type Request struct {
	InBlob     []byte
	PrivLevel  *uint // SNP VMPL; nil leaves the kernel default
	GetAuxBlob bool  // SNP: the certificate table
}

// Report returns outblob and (when asked) auxblob.
func (c *Client) Report(ctx context.Context, req Request) (out, aux []byte, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &report.Request{InBlob: req.InBlob, GetAuxBlob: req.GetAuxBlob}
	if req.PrivLevel != nil {
		r.Privilege = &report.Privilege{Level: *req.PrivLevel}
	}
	resp, err := report.Get(c.fs, r)
	if err != nil {
		return nil, nil, fmt.Errorf("configfs-tsm report: %w", err)
	}
	if got := strings.TrimSpace(resp.Provider); got != c.provider {
		return nil, nil, fmt.Errorf("%w: got %q, want %q", ErrWrongProvider, got, c.provider)
	}
	return resp.OutBlob, resp.AuxBlob, nil
}

// Probe reports the provider behind configfs-tsm ("" and an error when
// configfs-tsm is absent). It creates and removes one report entry.
func Probe(fs configfsi.Client) (string, error) {
	if fs == nil {
		var err error
		if fs, err = linuxtsm.MakeClient(); err != nil {
			return "", err
		}
	}
	r, err := report.CreateOpenReport(fs)
	if err != nil {
		return "", err
	}
	defer r.Destroy()
	p, err := r.ReadOption("provider")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(p)), nil
}
