// Command baseline is the benchmark's floor: a bare net/http server that
// answers every request with the same bytes from memory, with the headers
// cdh-proxy sends on a hit (same names, same byte count). It logs {"msg":"listening","addr":…} like cdh-proxy.
package main

import (
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
)

func main() {
	size := flag.Int("size", 32, "response size in bytes")
	bind := flag.String("bind", "127.0.0.1:0", "listen address")
	flag.Parse()
	body := make([]byte, *size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	length := strconv.Itoa(len(body))
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		slog.Error("listen", "err", err)
		os.Exit(1)
	}
	slog.New(slog.NewJSONHandler(os.Stderr, nil)).Info("listening", "addr", ln.Addr().String())
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", length)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Cache", "HIT")
		h.Set("Age", "0")
		_, _ = w.Write(body)
	}))
}
