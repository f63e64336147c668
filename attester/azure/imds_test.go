package azure

import (
	"net/http"
	"testing"
)

// The metadata service is link-local: an HTTP(S)_PROXY must never see the
// requests (Go's own localhost exemption hides this in tests, so it is
// checked on the transport).
func TestIMDSNeverProxied(t *testing.T) {
	d := NewDevice(Options{})
	tr, ok := d.http.Transport.(*http.Transport)
	if !ok || tr.Proxy != nil {
		t.Fatal("the metadata client uses a proxy function")
	}
	if d.imds != DefaultIMDS || d.tpmPath != DefaultTPM {
		t.Fatalf("defaults: %s %s", d.imds, d.tpmPath)
	}
}
