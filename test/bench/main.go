// Command bench is `make bench`: it measures cdh-proxy against the strict
// test KBS and writes BENCHMARKS.md. -short runs every part for a moment so
// CI keeps the suite working (its numbers mean nothing).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

type bench struct {
	short bool
	only  string
	// secondPullGets is how many layers P6's second pull downloaded.
	secondPullGets int
	proxyBin       string
	baseBin        string
	useWrk         bool
	out            bytes.Buffer

	// measured, for the goals table
	minRatio       float64
	p99At64        time.Duration // cdh-proxy, 32 B, 64 conns
	baseP99At64    time.Duration
	maxP99Ratio    float64
	maxCPURatio    float64 // cdh-proxy CPU/req ÷ floor's, worst cell at 16+ conns
	attestations   uint64
	fetches        uint64
	overhead       map[kbsclient.KeyAlgorithm]time.Duration
	binMiB         float64
	rssLoadedMiB   float64
	rssLoaded50MiB float64
	listenMedian   time.Duration
	cachedSecrets  int
	peerRatio      float64 // P6: cdh-proxy's cold pull time ÷ containerd's
	guestPSS       float64 // P7: the trio's PSS, MiB
	guestAttest    uint64  // P7: attestations after the first secret
}

func main() {
	b := &bench{}
	flag.BoolVar(&b.short, "short", false, "run every part briefly (CI)")
	flag.StringVar(&b.proxyBin, "proxy", "bin/cdh-proxy", "cdh-proxy binary (static release build)")
	flag.StringVar(&b.baseBin, "baseline", "bin/baseline", "baseline server binary")
	out := flag.String("out", "", "write the Markdown report here (default stdout)")
	noWrk := flag.Bool("no-wrk", false, "use the in-repo Go load generator even if wrk is installed")
	flag.StringVar(&b.only, "only", "", "run only these parts, comma-separated (p1,p2,p3,p5,p6,p7,p8,go); the goals table needs all")
	flag.Parse()
	_, err := exec.LookPath("wrk")
	b.useWrk = err == nil && !*noWrk
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *out == "" {
		_, _ = os.Stdout.Write(b.out.Bytes())
		return
	}
	if err := os.WriteFile(*out, b.out.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (b *bench) printf(format string, a ...any) { fmt.Fprintf(&b.out, format, a...) }

func (b *bench) run() error {
	b.header()
	b.minRatio = 99
	b.overhead = map[kbsclient.KeyAlgorithm]time.Duration{}
	parts := []struct {
		name string
		run  func() error
	}{{"p1", b.p1}, {"p2", b.p2}, {"p3", b.p3}, {"p5", b.p5}, {"p6", b.p6}, {"p7", b.p7}, {"p8", b.p8}, {"go", b.goBenchmarks}}
	for _, part := range parts {
		if b.only != "" && !slices.Contains(strings.Split(b.only, ","), part.name) {
			continue
		}
		if err := part.run(); err != nil {
			return err
		}
	}
	if !b.short && b.only == "" { // short runs measure too little for the goals to mean anything
		b.goals()
	}
	return nil
}

// goals compares the measurements with issue 7's targets and explains misses.
func (b *bench) goals() {
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	b.printf("## Goals\n\n| goal | measured | status | why / what would close it |\n|---|---|---|---|\n")
	why := fmt.Sprintf("CPU per request at 16 and 64 connections is at most %.2f × the floor's (last column). ", b.maxCPURatio) + p1Why
	b.printf("| P1 req/s ≥ 0.95 × floor (every cell, as shipped) | lowest %.2f | %s | %s |\n", b.minRatio, mark(b.minRatio >= 0.95), why)
	b.printf("| P1 p99 ≤ 1.25 × floor's (every cell, as shipped) | highest %.2f | %s | %s |\n", b.maxP99Ratio, mark(b.maxP99Ratio <= 1.25), why)
	b.printf("| P2 exactly 1 attestation, 100 fetches | %d and %d | %s | |\n", b.attestations, b.fetches, mark(b.attestations == 1 && b.fetches == 100))
	for _, alg := range []kbsclient.KeyAlgorithm{kbsclient.KeyEC256, kbsclient.KeyEC521, kbsclient.KeyRSA256} {
		o := b.overhead[alg]
		why := ""
		if o >= 2*time.Millisecond {
			why = "client-side cryptography, not protocol overhead: the key is made ahead of time (keygen ≈ 0), what remains is JWE decryption and ECDH in pure Go (the decrypt column, and the KBS's own encryption to P-521 in its server time)."
		}
		b.printf("| P3 overhead < 2 ms (%s) | %s | %s | %s |\n", alg, us(o), mark(o < 2*time.Millisecond), why)
	}
	b.printf("| P5 binary < 20 MiB | %.1f MiB | %s | |\n", b.binMiB, mark(b.binMiB < 20))
	b.printf("| P5 listening < 20 ms | %s | %s | system roots load in the background (they took ~20 ms) |\n", us(b.listenMedian), mark(b.listenMedian < 20*time.Millisecond))
	status := mark(b.rssLoadedMiB < 25)
	if b.rssLoadedMiB >= 25 && b.rssLoaded50MiB < 25 {
		status = "**missed** as shipped, met with GOGC=50"
	}
	b.printf("| P5 RSS < 25 MiB with 10k secrets | %.1f MiB as shipped, %.1f MiB with GOGC=50 (%d secrets) | %s | the documented trade-off: Go's GC target (100 %%) for throughput by default, GOGC=50 for a smaller heap. The live heap is tiny, so the GC runs at its minimum goal, 4 MiB × GOGC/100: at 50 %% it ran ~74 times a second under 16-connection warm-hit load (GODEBUG=gctrace=1), each cycle preempting every goroutine — the P1 `GOGC=50` table shows that price. Since guest image pull (issue 15) the process also starts ~3.6 MiB larger, idle or loaded: Go initialises every linked package at start (containers/image's reference regexps and the rest, docs/image-pull.md, “Dependencies and what they cost”); cdh-proxy itself does nothing for image pull before the first PullImage |\n", b.rssLoadedMiB, b.rssLoaded50MiB, b.cachedSecrets, status)
	b.printf("| P6 static binary with image pull < 40 MiB (issue 15) | %.1f MiB | %s | |\n", b.binMiB, mark(b.binMiB < 40))
	b.printf("| P6 a second pull of the same image downloads no layer | %d downloads | %s | |\n", b.secondPullGets, mark(b.secondPullGets == 0))
	b.printf("| P6 cold pull at most half of containerd's (issue 23) | %.2f× | %s | |\n", b.peerRatio, mark(b.peerRatio <= 0.5))
	b.printf("| P7 at most one attestation per guest (issue 20) | %d | %s | |\n", b.guestAttest, mark(b.guestAttest <= 1))
	b.printf("| P7 the trio's PSS below guest-components' 33.7 MiB (issue 20) | %.1f MiB | %s | |\n\n", b.guestPSS, mark(b.guestPSS < 33.7))
}

func (b *bench) header() {
	cpu := "unknown"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	b.printf("# cdh-proxy benchmarks\n\n")
	b.printf("Generated by `make bench` (`go run ./test/bench -out BENCHMARKS.md`) on %s.\n\n", time.Now().UTC().Format("2006-01-02"))
	b.printf("Machine: %s, %d CPUs, Linux %s, %s. Load tool: %s. Everything on 127.0.0.1; the KBS is the in-repo test KBS over plain HTTP on loopback.\n\n",
		cpu, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), map[bool]string{true: "wrk (Debian)", false: "in-repo Go load generator"}[b.useWrk])
}

// kbsServer starts the test KBS (allow-all) with files written by seed.
func kbsServer(seed func(kbs.TreeStore) error) (*kbs.Server, *httptest.Server, error) {
	dir, err := os.MkdirTemp("", "bench-kbs")
	if err != nil {
		return nil, nil, err
	}
	store := kbs.TreeStore{Dir: dir}
	if err := seed(store); err != nil {
		return nil, nil, err
	}
	srv, err := kbs.New(kbs.Config{Store: store})
	if err != nil {
		return nil, nil, err
	}
	return srv, httptest.NewServer(srv), nil
}

func (b *bench) startProxy(kbsURL string, extra ...string) (*proc.Proc, error) {
	return b.startProxyEnv(nil, kbsURL, extra...)
}

func (b *bench) startProxyEnv(env []string, kbsURL string, extra ...string) (*proc.Proc, error) {
	args := append([]string{"serve", "--attester", "sample", "--kbs-url", kbsURL, "--bind", "127.0.0.1:0",
		"--log-format", "json", "--cmdline", "-", "--cache-ttl", "1h"}, extra...)
	return proc.Start(b.proxyBin, env, "listening", args...)
}

// loadCPU is load plus the server's CPU time per request over the run:
// scheduling noise on a shared machine moves req/s far more than it moves
// the CPU a request costs.
func loadCPU(pid int, url string, conns int, d time.Duration, useWrk bool) (result, time.Duration, error) {
	before := proc.CPUTime(pid)
	r, err := load(url, conns, d, useWrk)
	after := proc.CPUTime(pid)
	if err != nil || r.Requests == 0 || before < 0 || after < 0 {
		return r, 0, err
	}
	return r, (after - before) / time.Duration(r.Requests), nil
}

func fill(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// P1: warm hits, cdh-proxy vs the bare net/http floor, same bytes: as
// shipped (Go's GC target, 100 %, as the floor), then with GOGC=50, the
// memory-for-throughput setting.
func (b *bench) p1() error {
	sizes := []int{32, 4 << 10, 256 << 10}
	conns := []int{1, 16, 64}
	d, rounds := 3*time.Second, 3
	if b.short {
		sizes, conns, d, rounds = []int{32}, []int{16}, 500*time.Millisecond, 1
	}
	b.printf("## P1 — warm hit vs the loopback floor\n\n")
	b.printf("Each cell: the median of %d rounds of %v closed-loop load per target, alternating cdh-proxy (serving a cached secret) and `test/cmd/baseline` (bare `net/http` with Go's defaults, the same bytes and headers from memory). ", rounds, d)
	b.printf("Ratio = cdh-proxy req/s ÷ baseline req/s. Latencies p50 / p99 / p99.9. CPU/req: the server process's user+system CPU time over the run ÷ requests (less moved by scheduling noise than req/s).\n\n")
	if err := b.p1Table("cdh-proxy as shipped (Go's GC target, 100 %)", nil, sizes, conns, d, rounds, true); err != nil {
		return err
	}
	if b.short {
		return nil
	}
	return b.p1Table("cdh-proxy with `GOGC=50` (the memory-tight setting; P5 has its RSS)", []string{"GOGC=50"}, []int{32}, conns, d, rounds, false)
}

func (b *bench) p1Table(title string, env []string, sizes, conns []int, d time.Duration, rounds int, goals bool) error {
	_, ts, err := kbsServer(func(s kbs.TreeStore) error {
		for _, n := range sizes {
			if err := s.Write("bench", "size", fmt.Sprint(n), fill(n)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer ts.Close()
	p, err := b.startProxyEnv(env, ts.URL, "--cache-max-entry", fmt.Sprint(1<<20))
	if err != nil {
		return err
	}
	defer p.Stop(10 * time.Second)

	b.printf("%s:\n\n", title)
	b.printf("| size | conns | cdh-proxy req/s | baseline req/s | ratio | cdh-proxy p50 / p99 / p99.9 | baseline p50 / p99 / p99.9 | p99 ratio | CPU/req cdh-proxy / baseline |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range sizes {
		url := fmt.Sprintf("http://%s/cdh/resource/bench/size/%d", p.Addr, n)
		if err := warm(url); err != nil {
			return err
		}
		base, err := proc.Start(b.baseBin, nil, "listening", "-size", fmt.Sprint(n))
		if err != nil {
			return err
		}
		baseURL := "http://" + base.Addr + "/"
		for _, c := range conns {
			var rps, rbs []result
			var cps, cbs []time.Duration
			for range rounds { // alternate, so drift hits both alike
				rp, cp, err := loadCPU(p.Cmd.Process.Pid, url, c, d, b.useWrk)
				if err != nil {
					return err
				}
				rb, cb, err := loadCPU(base.Cmd.Process.Pid, baseURL, c, d, b.useWrk)
				if err != nil {
					return err
				}
				if rp.Errors > 0 || rb.Errors > 0 {
					return fmt.Errorf("P1 %dB/%d conns: %d proxy errors, %d baseline errors", n, c, rp.Errors, rb.Errors)
				}
				rps, rbs = append(rps, rp), append(rbs, rb)
				cps, cbs = append(cps, cp), append(cbs, cb)
			}
			rp, rb := median(rps), median(rbs)
			cp, cb := medianDur(cps), medianDur(cbs)
			if goals {
				b.minRatio = min(b.minRatio, rp.RPS/rb.RPS)
				b.maxP99Ratio = max(b.maxP99Ratio, float64(rp.P99)/float64(rb.P99))
				if c > 1 && cb > 0 {
					b.maxCPURatio = max(b.maxCPURatio, float64(cp)/float64(cb))
				}
				if n == 32 && c == 64 {
					b.p99At64, b.baseP99At64 = rp.P99, rb.P99
				}
			}
			b.printf("| %s | %d | %.0f | %.0f | %.2f | %s / %s / %s | %s / %s / %s | %.2f | %.1f µs / %.1f µs |\n", size(n), c, rp.RPS, rb.RPS, rp.RPS/rb.RPS,
				us(rp.P50), us(rp.P99), us(rp.P999), us(rb.P50), us(rb.P99), us(rb.P999), float64(rp.P99)/float64(rb.P99),
				float64(cp)/float64(time.Microsecond), float64(cb)/float64(time.Microsecond))
		}
		_ = base.Stop(5 * time.Second)
	}
	b.printf("\n")
	return nil
}

func warm(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("warm-up %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

func size(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func us(d time.Duration) string {
	if d >= time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%d µs", d.Microseconds())
}

// P2: 1,000 concurrent cold requests over 100 resources.
func (b *bench) p2() error {
	const resources, requests = 100, 1000
	k, ts, err := kbsServer(func(s kbs.TreeStore) error {
		for i := range resources {
			if err := s.Write("bench", "cold", fmt.Sprintf("r%03d", i), fill(64)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer ts.Close()
	// Slow the KBS a little so requests really overlap.
	k.SetFaults(kbs.Faults{Delay: 20 * time.Millisecond, Only: []kbs.Endpoint{kbs.EndpointResource}})
	p, err := b.startProxy(ts.URL)
	if err != nil {
		return err
	}
	defer p.Stop(10 * time.Second)
	tr := &http.Transport{MaxConnsPerHost: 256, MaxIdleConnsPerHost: 256}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := range requests {
		wg.Go(func() {
			resp, err := client.Get(fmt.Sprintf("http://%s/cdh/resource/bench/cold/r%03d", p.Addr, i%resources))
			ok := err == nil && resp.StatusCode == 200
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if !ok {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	c := k.Counts()
	b.attestations, b.fetches = c.Handshakes, c.Resource
	b.printf("## P2 — coalescing\n\n")
	b.printf("%d concurrent cold GETs over %d resources (KBS resource answers delayed 20 ms so they overlap), fresh cdh-proxy: ", requests, resources)
	b.printf("**%d attestation(s)** (auth %d, attest %d) and **%d resource fetches** at the test KBS; %d failed; all done in %s. Goal: 1 and %d.\n\n",
		c.Handshakes, c.Auth, c.Attest, c.Resource, failed, elapsed.Round(time.Millisecond), resources)
	if failed > 0 {
		return fmt.Errorf("P2: %d requests failed", failed)
	}
	return nil
}

// P3: cold path, step by step, per key algorithm, in-process (kbsclient's
// Trace hook) against the test KBS on loopback.
func (b *bench) p3() error {
	k, ts, err := kbsServer(func(s kbs.TreeStore) error { return s.Write("bench", "cold", "one", fill(32)) })
	if err != nil {
		return err
	}
	defer ts.Close()
	iters := 20
	if b.short {
		iters = 2
	}
	b.printf("## P3 — cold path (first secret)\n\n")
	b.printf("Mean of %d fresh clients per key type (full RCAR, resource GET, JWE decrypt), measured inside `kbsclient` with its `Trace` hook; KBS server time is the test KBS's own handler time. Overhead = total − KBS server time. *ahead*: the key was made ahead of time, as a started client does (the first request comes after it is ready; every later handshake takes the key made after the previous one); *on request*: `DisableKeyPregeneration`, the key is made when the handshake starts.\n\n", iters)
	steps := []string{"keygen", "auth", "evidence", "attest", "resource", "decrypt"}
	b.printf("| key | key made | %s | total | KBS server | overhead |\n|---|---|%s---|---|---|\n", strings.Join(steps, " | "), strings.Repeat("---|", len(steps)))
	p := mustPath("bench", "cold", "one")
	// Warm-up, not measured: the process's first TLS-capable client waits
	// for the system roots (loaded once per process, ~20 ms).
	if c, err := kbsclient.New(kbsclient.Config{URL: ts.URL, Attester: sample.Attester{}}); err == nil {
		_, _ = c.Resource(context.Background(), p)
		c.Close()
	}
	for _, alg := range []kbsclient.KeyAlgorithm{kbsclient.KeyEC256, kbsclient.KeyEC521, kbsclient.KeyRSA256} {
		for _, ahead := range []bool{true, false} {
			sum := map[string]time.Duration{}
			var mu sync.Mutex
			var total, server time.Duration
			for range iters {
				c, err := kbsclient.New(kbsclient.Config{URL: ts.URL, Attester: sample.Attester{}, KeyAlgorithm: alg, DisableKeyPregeneration: !ahead,
					Trace: func(step string, d time.Duration) { mu.Lock(); sum[step] += d; mu.Unlock() }})
				if err != nil {
					return err
				}
				if err := c.KeyReady(context.Background()); err != nil {
					return err
				}
				before := k.Counts().ServerTime
				t0 := time.Now()
				if _, err := c.Resource(context.Background(), p); err != nil {
					return err
				}
				total += time.Since(t0)
				server += k.Counts().ServerTime - before
				c.Close()
			}
			n := time.Duration(iters)
			row := make([]string, len(steps))
			for i, s := range steps {
				row[i] = us(sum[s] / n)
			}
			when := "on request"
			if ahead {
				when = "ahead"
				b.overhead[alg] = (total - server) / n
			}
			b.printf("| %s | %s | %s | %s | %s | %s |\n", alg, when, strings.Join(row, " | "), us(total/n), us(server/n), us((total-server)/n))
		}
	}
	b.printf("\n")
	return nil
}

func mustPath(r, t, g string) resource.Path {
	p, err := resource.New(r, t, g)
	if err != nil {
		panic(err)
	}
	return p
}

// P5: footprint: binary size, RSS idle and with many cached secrets, exec → listening.
func (b *bench) p5() error {
	fi, err := os.Stat(b.proxyBin)
	if err != nil {
		return err
	}
	secrets := 10000
	starts := 20
	if b.short {
		secrets, starts = 200, 3
	}
	_, ts, err := kbsServer(func(s kbs.TreeStore) error {
		for i := range secrets {
			if err := s.Write("bench", "many", fmt.Sprintf("s%05d", i), fill(32)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer ts.Close()
	idle, loaded, err := b.rss(ts.URL, secrets, nil)
	if err != nil {
		return err
	}
	idle50, loaded50, err := b.rss(ts.URL, secrets, []string{"GOGC=50"})
	if err != nil {
		return err
	}

	var times []time.Duration
	for range starts {
		d, err := b.timeToListen()
		if err != nil {
			return err
		}
		times = append(times, d)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.binMiB, b.rssLoadedMiB, b.rssLoaded50MiB, b.listenMedian, b.cachedSecrets = float64(fi.Size())/(1<<20), loaded, loaded50, times[len(times)/2], secrets
	b.printf("## P5 — footprint\n\n")
	b.printf("| measure | value | how |\n|---|---|---|\n")
	b.printf("| binary size | %.1f MiB | `%s` built with `CGO_ENABLED=0 go build -tags containers_image_openpgp -trimpath -ldflags='-s -w'` |\n", float64(fi.Size())/(1<<20), b.proxyBin)
	b.printf("| RSS idle | %.1f MiB (GOGC=50: %.1f MiB) | VmRSS 0.5 s after start (token held) |\n", idle, idle50)
	b.printf("| RSS with %d cached secrets | %.1f MiB (GOGC=50: %.1f MiB) | VmRSS after fetching %d distinct 32-byte secrets, cache TTL 1h |\n", secrets, loaded, loaded50, secrets)
	b.printf("| exec → listening | %s median (min %s, max %s) | %d runs: fork/exec until a TCP connect to --bind succeeds, KBS not contacted first |\n\n",
		us(times[len(times)/2]), us(times[0]), us(times[len(times)-1]), starts)
	return nil
}

// rss starts cdh-proxy with env, reads its RSS idle and after fetching
// secrets distinct secrets.
func (b *bench) rss(kbsURL string, secrets int, env []string) (idle, loaded float64, err error) {
	p, err := b.startProxyEnv(env, kbsURL)
	if err != nil {
		return 0, 0, err
	}
	defer p.Stop(10 * time.Second)
	time.Sleep(500 * time.Millisecond)
	idle = proc.RSS(p.Cmd.Process.Pid)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 32, MaxIdleConnsPerHost: 32}}
	var wg sync.WaitGroup
	next := make(chan int)
	var failed sync.Map
	for range 32 {
		wg.Go(func() {
			for i := range next {
				resp, err := client.Get(fmt.Sprintf("http://%s/cdh/resource/bench/many/s%05d", p.Addr, i))
				if err != nil || resp.StatusCode != 200 {
					failed.Store(i, true)
				}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	for i := range secrets {
		next <- i
	}
	close(next)
	wg.Wait()
	loaded = proc.RSS(p.Cmd.Process.Pid)
	nFailed := 0
	failed.Range(func(any, any) bool { nFailed++; return true })
	if nFailed > 0 {
		return 0, 0, fmt.Errorf("P5: %d of %d fetches failed", nFailed, secrets)
	}
	return idle, loaded, nil
}

// timeToListen measures exec until the port accepts, on a fixed free port.
func (b *bench) timeToListen() (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(b.proxyBin, "serve", "--attester", "sample", "--kbs-url", "http://127.0.0.1:9", "--bind", addr, "--cmdline", "-", "--log-level", "error")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for time.Since(start) < 5*time.Second {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return time.Since(start), nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return 0, fmt.Errorf("cdh-proxy did not listen on %s", addr)
}

// goBenchmarks runs the package micro-benchmarks.
func (b *bench) goBenchmarks() error {
	benchtime, azTime := "1s", "20x"
	if b.short {
		benchtime, azTime = "100x", "2x"
	}
	if err := b.goBench("## Go benchmarks\n\n", "-bench", ".", "-benchmem", "-benchtime", benchtime, "./cache", "./resource", "./proxy/httpapi", "./kbsclient"); err != nil {
		return err
	}
	// Azure vTPM evidence over swtpm: tens of milliseconds each, so fewer rounds.
	return b.goBench("Azure vTPM evidence (one attestation's TPM, paravisor and metadata round trips; swtpm and a simulated paravisor polling every 10 ms, so an upper bound for a real vTPM):\n\n",
		"-bench", "Evidence", "-benchtime", azTime, "./attester/azure")
}

// goBench runs `go test -run ^$ args…` and records its benchmark lines.
func (b *bench) goBench(title string, args ...string) error {
	args = append([]string{"test", "-run", "^$"}, args...)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	b.printf("%s`go %s`\n\n```\n", title, strings.Join(args, " "))
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			b.printf("%s\n", l)
		}
	}
	b.printf("```\n\n")
	return nil
}

// median picks the run with the median req/s (its latencies go with it).
func median(rs []result) result {
	sort.Slice(rs, func(i, j int) bool { return rs[i].RPS < rs[j].RPS })
	return rs[len(rs)/2]
}

// p1Why is the profile-backed account of what separates cdh-proxy's warm
// hit from the floor (issue 16), kept next to the numbers it explains.
const p1Why = "What cdh-proxy spends beyond the floor, by CPU profiles of both under the same wrk load: the loopback/Origin/Host guard and path validation (~0.3 µs, ours, needed), the cache lookup and `Age`/`X-Cache` headers (~0.2 µs, ours), one metrics increment (atomic, <0.05 µs), and nothing of the GC: cdh-proxy now runs Go's GC target like the floor (the `GOGC=50` table shows what the old 50 % default cost). The per-request socket deadlines that cost ~3 µs are gone (connections are watched by one ticker). The rest of the spread between runs is scheduling on this shared 2-core VM, where wrk and the server compete for the same cores: req/s and p99 move by 10–20 % between identical rounds, CPU/req far less."

func medianDur(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
