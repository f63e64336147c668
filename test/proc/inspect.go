package proc

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RSS returns a process's resident set in MiB (VmRSS), or -1 when unknown.
func RSS(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				return -1
			}
			return kb / 1024
		}
	}
	return -1
}

// Sample finds one sample in Prometheus text output, e.g. `go_goroutines`
// or `cdh_proxy_http_requests_total{route="resource",status="200"}`.
func Sample(metrics, sample string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(metrics))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}
