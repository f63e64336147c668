package azure

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// DefaultIMDS is Azure's instance metadata service, reachable only from
// inside the VM.
const DefaultIMDS = "http://169.254.169.254"

// maxIMDSBody bounds what is read from the metadata service.
const maxIMDSBody = 1 << 20

// newIMDSClient talks to the link-local metadata service directly: an
// HTTP(S)_PROXY in the environment must not see these requests.
func newIMDSClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, MaxIdleConns: 1, IdleConnTimeout: 30 * time.Second},
		Timeout:   30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("metadata service redirected")
		},
	}
}

func (d *Device) imdsDo(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(d.imds, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Metadata", "true")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return fmt.Errorf("metadata service %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSBody+1))
	if err != nil {
		return fmt.Errorf("metadata service %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("metadata service %s: HTTP %d", path, resp.StatusCode)
	}
	if len(data) > maxIMDSBody {
		return fmt.Errorf("metadata service %s: answer over %d bytes", path, maxIMDSBody)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("metadata service %s: %w", path, err)
	}
	return nil
}

// vcek fetches the VCEK (DER) the host caches for this chip and TCB. It does
// not change while the VM runs, so it is fetched once.
func (d *Device) vcek(ctx context.Context) ([]byte, error) {
	if d.vcekDER != nil {
		return d.vcekDER, nil
	}
	var ans struct {
		VcekCert string `json:"vcekCert"`
	}
	if err := d.imdsDo(ctx, http.MethodGet, "/metadata/THIM/amd/certification", nil, &ans); err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(ans.VcekCert))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("metadata service: vcekCert is not a PEM certificate")
	}
	d.vcekDER = block.Bytes
	return d.vcekDER, nil
}

// tdQuote has the host's quoting enclave turn a TD report into a quote.
func (d *Device) tdQuote(ctx context.Context, report []byte) ([]byte, error) {
	body, _ := json.Marshal(map[string]string{"report": base64.RawURLEncoding.EncodeToString(report)})
	var ans struct {
		Quote string `json:"quote"`
	}
	if err := d.imdsDo(ctx, http.MethodPost, "/acc/tdquote", body, &ans); err != nil {
		return nil, err
	}
	q, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(ans.Quote, "="))
	if err != nil || len(q) == 0 {
		return nil, errors.New("metadata service: quote is not URL-safe base64")
	}
	return q, nil
}
