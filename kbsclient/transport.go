package kbsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// NewHTTPClient returns the client used to talk to the KBS: system roots plus
// the extra PEM roots (cdh.toml kbs_cert, aa.toml cert), TLS 1.2+, bounded
// connection-level timeouts. Per-request budgets come from the caller's ctx.
//
// Loading the system roots takes ~20 ms (parsing every CA file), which would
// be most of cdh-proxy's startup; it happens in the background and only the
// first KBS request waits for it. The extra roots are checked now, so a bad
// kbs_cert still fails at startup.
func NewHTTPClient(extraRootsPEM ...[]byte) (*http.Client, error) {
	extra := x509.NewCertPool()
	for _, pemBytes := range extraRootsPEM {
		if len(pemBytes) == 0 {
			continue
		}
		if !extra.AppendCertsFromPEM(pemBytes) {
			return nil, errors.New("kbs certificate: no PEM certificate found")
		}
	}
	lt := &lazyTransport{ready: make(chan struct{})}
	go func() {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for _, pemBytes := range extraRootsPEM {
			pool.AppendCertsFromPEM(pemBytes)
		}
		lt.tr = newTransport(pool)
		close(lt.ready)
	}()
	return &http.Client{
		Transport: lt,
		// The KBS protocol has no redirects; following one could send our
		// Bearer token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return fmt.Errorf("kbs answered with a redirect: refused")
		},
	}, nil
}

func newTransport(roots *x509.CertPool) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// lazyTransport waits for its real transport (built once the roots are
// loaded) before the first round trip.
type lazyTransport struct {
	ready chan struct{}
	tr    *http.Transport
}

func (l *lazyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	select {
	case <-l.ready:
	case <-req.Context().Done():
		if req.Body != nil {
			req.Body.Close() // RoundTrip must close the body, even on error
		}
		return nil, req.Context().Err()
	}
	return l.tr.RoundTrip(req)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the real transport.
func (l *lazyTransport) CloseIdleConnections() {
	select {
	case <-l.ready:
		l.tr.CloseIdleConnections()
	default:
	}
}
