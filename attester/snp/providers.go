package snp

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-sev-guest/client"

	"github.com/cdh-proxy/cdh-proxy/attester/internal/tsm"
)

// vmpl0 is the privilege level the verifier requires.
var vmpl0 = uint(0)

// TSMProvider gets reports through configfs-tsm (provider sev_guest) at
// VMPL 0, with the certificate table as auxblob.
type TSMProvider struct{ c *tsm.Client }

// NewTSMProvider returns a configfs-tsm provider; fs nil means the real configfs.
func NewTSMProvider(fs configfsi.Client) (*TSMProvider, error) {
	c, err := tsm.New(fs, tsm.ProviderSNP)
	if err != nil {
		return nil, err
	}
	return &TSMProvider{c: c}, nil
}

// Report implements Provider.
func (p *TSMProvider) Report(ctx context.Context, rd [64]byte) ([]byte, []byte, error) {
	return p.c.Report(ctx, tsm.Request{InBlob: rd[:], PrivLevel: &vmpl0, GetAuxBlob: true})
}

// DeviceProvider gets extended reports through /dev/sev-guest ioctls
// (go-sev-guest), for kernels without configfs-tsm. The device is opened per
// call and calls are serialized.
type DeviceProvider struct {
	mu sync.Mutex
}

// Report implements Provider.
func (p *DeviceProvider) Report(ctx context.Context, rd [64]byte) ([]byte, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := client.OpenDevice()
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/sev-guest: %w", err)
	}
	defer d.Close()
	return client.GetRawExtendedReportAtVmpl(d, rd, 0)
}
