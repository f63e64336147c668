package tdx

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-tdx-guest/client"

	"github.com/cdh-proxy/cdh-proxy/attester/internal/tsm"
)

// TSMProvider gets quotes through configfs-tsm (provider tdx_guest): the
// only path guest-components uses.
type TSMProvider struct{ c *tsm.Client }

// NewTSMProvider returns a configfs-tsm provider; fs nil means the real configfs.
func NewTSMProvider(fs configfsi.Client) (*TSMProvider, error) {
	c, err := tsm.New(fs, tsm.ProviderTDX)
	if err != nil {
		return nil, err
	}
	return &TSMProvider{c: c}, nil
}

// Quote implements Provider.
func (p *TSMProvider) Quote(ctx context.Context, rd [64]byte) ([]byte, error) {
	out, _, err := p.c.Report(ctx, tsm.Request{InBlob: rd[:]})
	return out, err
}

// DeviceProvider uses the /dev/tdx_guest GetQuote ioctl (go-tdx-guest). Only
// some (downstream) kernels have it: a best-effort fallback. Calls are
// serialized and the device is opened per call.
type DeviceProvider struct{ mu sync.Mutex }

// Quote implements Provider.
func (p *DeviceProvider) Quote(ctx context.Context, rd [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := client.OpenDevice()
	if err != nil {
		return nil, fmt.Errorf("open /dev/tdx_guest: %w", err)
	}
	defer d.Close()
	return client.GetRawQuote(d, rd)
}
