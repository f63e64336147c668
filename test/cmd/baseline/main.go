// Command baseline is the benchmark's floor (package test/floor) as a
// server: bare net/http with Go's defaults. It logs
// {"msg":"listening","addr":…} like cdh-proxy.
package main

import (
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/cdh-proxy/cdh-proxy/test/floor"
)

func main() {
	size := flag.Int("size", 32, "response size in bytes")
	bind := flag.String("bind", "127.0.0.1:0", "listen address")
	flag.Parse()
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		slog.Error("listen", "err", err)
		os.Exit(1)
	}
	slog.New(slog.NewJSONHandler(os.Stderr, nil)).Info("listening", "addr", ln.Addr().String())
	_ = http.Serve(ln, floor.Handler(*size))
}
