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
func NewHTTPClient(extraRootsPEM ...[]byte) (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, pemBytes := range extraRootsPEM {
		if len(pemBytes) == 0 {
			continue
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, errors.New("kbs certificate: no PEM certificate found")
		}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{
		Transport: tr,
		// The KBS protocol has no redirects; following one could send our
		// Bearer token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return fmt.Errorf("kbs answered with a redirect: refused")
		},
	}, nil
}
