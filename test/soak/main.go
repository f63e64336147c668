// Command soak is a bounded load run for docs/reliability.md: a fixed number
// of requests over a mix of cache hits, misses (short TTL, many secrets) and
// errors (missing secrets), against the real binary and the test KBS, with
// RSS and goroutines sampled every second. It stops by itself.
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

func main() {
	total := flag.Int("requests", 1_000_000, "requests to send")
	conns := flag.Int("conns", 32, "concurrent connections")
	bin := flag.String("proxy", "bin/cdh-proxy", "cdh-proxy binary")
	flag.Parse()
	if err := run(*bin, *total, *conns); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(bin string, total, conns int) error {
	dir, err := os.MkdirTemp("", "soak-kbs")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	store := kbs.TreeStore{Dir: dir}
	const secrets = 1000
	for i := range secrets {
		if err := store.Write("soak", "s", fmt.Sprintf("k%04d", i), []byte(strings.Repeat("x", 64+i%512))); err != nil {
			return err
		}
	}
	srv, err := kbs.New(kbs.Config{Store: store, TokenLifetime: 20 * time.Second})
	if err != nil {
		return err
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	p, err := proc.Start(bin, nil, "listening", "serve", "--attester", "sample", "--kbs-url", ts.URL,
		"--bind", "127.0.0.1:0", "--log-format", "json", "--cmdline", "-",
		"--cache-ttl", "2s", "--cache-max-bytes", "262144")
	if err != nil {
		return err
	}
	defer p.Stop(10 * time.Second)
	base := "http://" + p.Addr

	// Mix: 80 % ten hot secrets (hits), 15 % a thousand secrets with a 2 s TTL
	// and a 256 KiB cache (misses, evictions), 5 % missing secrets (404s).
	url := func(r *rand.Rand) string {
		switch x := r.IntN(100); {
		case x < 80:
			return fmt.Sprintf("%s/cdh/resource/soak/s/k%04d", base, r.IntN(10))
		case x < 95:
			return fmt.Sprintf("%s/cdh/resource/soak/s/k%04d", base, r.IntN(secrets))
		default:
			return fmt.Sprintf("%s/cdh/resource/soak/s/missing%d", base, r.IntN(50))
		}
	}
	var sent, ok, notFound, other atomic.Int64
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns}, Timeout: 30 * time.Second}
	done := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for w := range conns {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for sent.Add(1) <= int64(total) {
				resp, err := client.Get(url(r))
				if err != nil {
					other.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 404:
					notFound.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	fmt.Printf("| t (s) | requests | RSS (MiB) | goroutines |\n|---|---|---|---|\n")
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	sample := func() {
		fmt.Printf("| %.0f | %d | %.1f | %d |\n", time.Since(start).Seconds(), min(sent.Load(), int64(total)), proc.RSS(p.Cmd.Process.Pid), goroutines(base))
	}
	sample()
	for loop := true; loop; {
		select {
		case <-tick.C:
			sample()
		case <-done:
			loop = false
		}
	}
	sample()
	elapsed := time.Since(start)
	c := srv.Counts()
	fmt.Printf("\n%d requests in %s (%.0f req/s): %d × 200, %d × 404, %d other. KBS: %d attestations, %d resource GETs.\n",
		total, elapsed.Round(time.Second), float64(total)/elapsed.Seconds(), ok.Load(), notFound.Load(), other.Load(), c.Handshakes, c.Resource)
	if other.Load() > 0 {
		return fmt.Errorf("%d unexpected answers", other.Load())
	}
	return nil
}

// goroutines reads go_goroutines from /metrics, -1 when unavailable.
func goroutines(base string) int {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1
	}
	n, ok := proc.Sample(string(body), "go_goroutines")
	if !ok {
		return -1
	}
	return int(n)
}
