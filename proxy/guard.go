package proxy

import (
	"net"
	"net/http"
)

// guard admits only loopback peers without an Origin header. A browser in
// the pod (or DNS rebinding from outside) sends Origin; curl, SDKs and
// kata-agent never do.
func guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackPeer(r.RemoteAddr) {
			writeProblem(w, classify(errForbiddenPeer))
			return
		}
		if _, ok := r.Header["Origin"]; ok {
			writeProblem(w, classify(errForbiddenOrigin))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
