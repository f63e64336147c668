// Command hitprobe serves cdh-proxy's warm hit (the real HTTP front end
// over a warmed cache) or the bare net/http floor in one process, for A/B
// experiments under a load tool and for CPU profiles (docs/performance.md).
// It is not part of cdh-proxy.
//
//	go run ./test/cmd/hitprobe -mode proxy -cpuprofile /tmp/p.prof &   # prints its address
//	wrk -t1 -c16 -d6s http://ADDR/cdh/resource/default/akv/coco_one
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/metrics"
	"github.com/cdh-proxy/cdh-proxy/proxy/httpapi"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/test/floor"
)

type staticKBS []byte

func (k staticKBS) Resource(context.Context, resource.Path) ([]byte, error) {
	return append([]byte(nil), k...), nil
}
func (k staticKBS) Plugin(context.Context, resource.Plugin) ([]byte, error) { return nil, nil }

func main() {
	mode := flag.String("mode", "proxy", "proxy (cdh-proxy's front end, warm cache) or baseline (bare net/http)")
	srvMode := flag.String("srv", "watch", "proxy server: watch (as shipped: connection watcher) or deadlines (net/http Read/Write/Idle timeouts, the old way)")
	size := flag.Int("size", 32, "secret size in bytes")
	gogc := flag.Int("gogc", 100, "GC target")
	prof := flag.String("cpuprofile", "", "write a CPU profile here")
	dur := flag.Duration("dur", 10*time.Second, "serve this long")
	flag.Parse()
	debug.SetGCPercent(*gogc)
	body := make([]byte, *size)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var h http.Handler
	if *mode == "baseline" {
		h = floor.Handler(*size)
	} else {
		c, _ := cache.New(cache.Config{TTL: time.Hour})
		m, _ := metrics.New(metrics.StatsSource{Cache: c.Stats})
		if h, err = httpapi.NewHandler(httpapi.Config{Resources: &core.Secrets{Cache: c, KBS: staticKBS(body)}, Metrics: m}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println(ln.Addr().String())
	if *prof != "" {
		f, err := os.Create(*prof)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	if *mode == "proxy" && *srvMode == "watch" {
		_ = httpapi.Serve(ctx, ln, h, 30*time.Second, time.Second)
		return
	}
	srv := &http.Server{Handler: h, MaxHeaderBytes: 16 << 10}
	if *mode == "proxy" {
		srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout = 5*time.Second, 10*time.Second, 40*time.Second, 60*time.Second
	}
	go func() { _ = srv.Serve(ln) }()
	<-ctx.Done()
	_ = srv.Close()
}
