package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// result of one load run.
type result struct {
	Tool           string
	Requests       int
	Errors         int
	RPS            float64
	P50, P99, P999 time.Duration
}

// wrkScript makes wrk print one JSON line with the percentiles we report.
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"p50":%d,"p99":%d,"p999":%d,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout))
end
`

// load runs a closed-loop load of conns connections against url for d,
// with wrk when it is installed (lighter than any Go client on 2 cores),
// else with the in-repo generator.
func load(url string, conns int, d time.Duration, useWrk bool) (result, error) {
	if useWrk {
		return loadWrk(url, conns, d)
	}
	return loadGo(url, conns, d)
}

func loadWrk(url string, conns int, d time.Duration) (result, error) {
	script := filepath.Join(os.TempDir(), "cdh-proxy-bench.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o600); err != nil {
		return result{}, err
	}
	// One wrk thread: on a 2-core machine that leaves a core for the server
	// (two threads make both cdh-proxy and the baseline look worse).
	threads := 1
	secs := max(1, int(d.Seconds())) // wrk takes whole seconds
	out, err := exec.Command("wrk", "-t", fmt.Sprint(threads), "-c", fmt.Sprint(conns), "-d", fmt.Sprintf("%ds", secs), "-s", script, url).Output()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r struct {
		Requests, DurationUS, P50, P99, P999, Errors int64
	}
	var raw map[string]int64
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &raw); err != nil {
		return result{}, fmt.Errorf("wrk output %q: %w", out, err)
	}
	r.Requests, r.DurationUS, r.P50, r.P99, r.P999, r.Errors = raw["requests"], raw["duration_us"], raw["p50"], raw["p99"], raw["p999"], raw["errors"]
	return result{
		Tool: "wrk", Requests: int(r.Requests), Errors: int(r.Errors),
		RPS: float64(r.Requests) / (float64(r.DurationUS) / 1e6),
		P50: time.Duration(r.P50) * time.Microsecond, P99: time.Duration(r.P99) * time.Microsecond, P999: time.Duration(r.P999) * time.Microsecond,
	}, nil
}

func loadGo(url string, conns int, d time.Duration) (result, error) {
	tr := &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var all []time.Duration
	errs := 0
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			bad := 0
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					if ctx.Err() == nil {
						bad++
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					bad++
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			errs += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(all) == 0 {
		return result{}, fmt.Errorf("no request completed against %s", url)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration { return all[min(len(all)-1, int(float64(len(all))*p))] }
	return result{Tool: "go", Requests: len(all), Errors: errs, RPS: float64(len(all)) / elapsed.Seconds(),
		P50: pct(0.50), P99: pct(0.99), P999: pct(0.999)}, nil
}
