package httpapi

import (
	"net"

	"net/http"
	"strings"

	"github.com/cdh-proxy/cdh-proxy/core"
)

// guard admits only loopback peers that look like local programs: no
// Origin header, no cross-site Sec-Fetch-Site (both only come from browsers:
// CSRF from a page in the pod), and a loopback Host (a DNS-rebound name
// resolving to 127.0.0.1 still carries its own name). curl, SDKs and
// kata-agent pass all three.
func guard(next http.Handler) http.Handler { return guardWith("", next) }

// guardWith is guard plus an optional required header (--require-header,
// like Vault's X-Vault-Request): a request forged through an SSRF-prone
// component in the pod usually cannot add arbitrary headers.
func guardWith(required string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !peerIsLoopback(r) {
			writeProblem(w, core.Classify(core.ErrForbiddenPeer))
			return
		}
		if _, ok := r.Header["Origin"]; ok {
			writeProblem(w, core.Classify(core.ErrForbiddenOrigin))
			return
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
			writeProblem(w, core.Classify(core.ErrForbiddenOrigin))
			return
		}
		if !loopbackHost(r.Host) {
			writeProblem(w, core.Classify(core.ErrForbiddenHost))
			return
		}
		if required != "" && r.Header.Get(required) == "" {
			p := core.Classify(core.ErrForbiddenPeer)
			p.Detail = "this cdh-proxy requires the " + required + " header (--require-header)"
			writeProblem(w, p)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// loopbackHost accepts localhost, loopback IPs and an empty Host (HTTP/1.0).
func loopbackHost(host string) bool {
	if host == "" {
		return true
	}
	// The names nearly every request carries, without parsing.
	if name := trimPort(host); name == "127.0.0.1" || name == "localhost" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") || strings.EqualFold(host, "localhost.") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// trimPort drops a ":<digits>" suffix, for the fast path of loopbackHost
// (anything else goes through the full parse).
func trimPort(host string) string {
	i := len(host)
	for i > 0 && '0' <= host[i-1] && host[i-1] <= '9' {
		i--
	}
	if i > 0 && i < len(host) && host[i-1] == ':' {
		return host[:i-1]
	}
	return host
}
