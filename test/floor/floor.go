// Package floor is the benchmarks' floor: a bare net/http handler that
// answers every request with the same bytes from memory and the headers a
// cdh-proxy cache hit carries (same names, same byte count), so that a
// comparison measures cdh-proxy's own work.
package floor

import (
	"net/http"
	"strconv"
)

// Handler answers with size bytes.
func Handler(size int) http.Handler {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", length)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Cache", "HIT")
		h.Set("Age", "0")
		_, _ = w.Write(body)
	})
}
