package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

// goroutines reads go_goroutines from the proxy's /metrics.
func goroutines(t *testing.T, p *proxyProc) int {
	t.Helper()
	r := p.get("/metrics")
	n, ok := proc.Sample(r.Body, "go_goroutines")
	if !ok {
		t.Fatalf("no go_goroutines in /metrics (%d): %.200s", r.Status, r.Body)
	}
	return int(n)
}

// The fault matrix (issue 6): each KBS fault through the real binary, with
// the status, the time to answer, goroutines before/after, and the cache
// still serving correctly once the fault is gone. docs/reliability.md lists
// the results.
func TestFaultMatrix(t *testing.T) {
	const budget = 2 * time.Second
	deadURL := "https://" + deadAddr(t)

	tests := []struct {
		name       string
		faults     kbs.Faults
		kcfg       kbs.Config
		dead       bool // KBS down from the start
		downAfter  bool // KBS stopped after warm-up
		noCA       bool // proxy does not trust the KBS CA
		path       string
		wantStatus int
		wantType   string
	}{
		{name: "KBS down at start", dead: true, wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
		{name: "KBS down after warm-up", downAfter: true, path: "/cdh/resource/default/akv/coco_two", wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
		{name: "slow beyond budget", faults: kbs.Faults{Delay: 5 * time.Second, Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 504, wantType: "urn:cdh-proxy:timeout"},
		{name: "500", faults: kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
		{name: "garbage JSON", faults: kbs.Faults{Body: []byte(`{"protected": [1,2,{`), Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 502, wantType: "urn:cdh-proxy:kbs-bad-response"},
		{name: "tampered JWE", faults: kbs.Faults{TamperJWE: true}, wantStatus: 502, wantType: "urn:cdh-proxy:kbs-bad-response"},
		{name: "JWE for another key", faults: kbs.Faults{ForeignKeyJWE: true}, wantStatus: 502, wantType: "urn:cdh-proxy:kbs-bad-response"},
		{name: "expired token (KBS clock ahead)", faults: kbs.Faults{ClockSkew: time.Hour}, wantStatus: 503, wantType: "urn:cdh-proxy:attestation-failed"},
		{name: "token 401 storm", faults: kbs.Faults{Status: 401, Type: "TokenVerifierError", Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 503, wantType: "urn:cdh-proxy:attestation-failed"},
		{name: "policy deny", kcfg: kbs.Config{Policy: kbs.Policy{DenySample: true}}, wantStatus: 403, wantType: "urn:cdh-proxy:kbs-policy-denied"},
		{name: "missing resource", path: "/cdh/resource/default/akv/nope", wantStatus: 404, wantType: "urn:cdh-proxy:kbs-not-found"},
		{name: "nonce mismatch", faults: kbs.Faults{WrongNonce: true}, wantStatus: 503, wantType: "urn:cdh-proxy:attestation-failed"},
		{name: "wrong CA on TLS", noCA: true, wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
		{name: "oversize body", faults: kbs.Faults{Body: make([]byte, 9<<20), Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 502, wantType: "urn:cdh-proxy:kbs-bad-response"},
		{name: "connection reset mid-body", faults: kbs.Faults{ResetMidBody: true, Only: []kbs.Endpoint{kbs.EndpointResource}}, wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKBS(t, tt.kcfg)
			url := k.URL
			if tt.dead {
				url = deadURL
			}
			kcert := k
			if tt.noCA {
				kcert = nil
			}
			k.SetFaults(tt.faults) // before start: handshake faults must meet the first attestation
			p := startProxyBin(t, proxyBin, kcert, nil, "--attester", "sample", "--kbs-url", url, "--budget", budget.String())
			if tt.downAfter {
				if r := p.get(cocoOne); r.Status != 200 {
					t.Fatalf("warm-up: %d", r.Status)
				}
			}
			// Let startup work (background attestation) finish, then count.
			testutil.Eventually(t, 10*time.Second, "the startup attestation", func() bool {
				return metric(t, p, `cdh_proxy_attestations_total{result="ok"}`)+metric(t, p, `cdh_proxy_attestations_total{result="error"}`) >= 1
			})
			before := goroutines(t, p)
			if tt.downAfter {
				k.close()
			}
			path := tt.path
			if path == "" {
				path = cocoOne
			}
			start := time.Now()
			r := p.get(path)
			took := time.Since(start)
			var pb problemBody
			_ = json.Unmarshal([]byte(r.Body), &pb)
			if r.Status != tt.wantStatus || pb.Type != tt.wantType {
				t.Fatalf("got %d %s, want %d %s", r.Status, r.Body, tt.wantStatus, tt.wantType)
			}
			if took > budget+time.Second {
				t.Fatalf("answered after %v; the budget is %v", took, budget)
			}
			if strings.Contains(r.Body, "a secret") {
				t.Fatal("error body contains the secret")
			}
			k.SetFaults(kbs.Faults{})
			// No goroutine leak: what the failure started has ended.
			testutil.Eventually(t, 3*budget, "goroutines back to their count before the fault", func() bool {
				return goroutines(t, p) <= before+1
			})
			// The cache is still correct once the fault is gone.
			if !tt.downAfter && !tt.dead && !tt.noCA && !tt.kcfg.Policy.DenySample {
				if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
					t.Fatalf("after the fault: %d %q", r.Status, r.Body)
				}
			}
			if tt.downAfter { // the warm copy is still served
				if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
					t.Fatalf("cached copy after KBS loss: %d %q", r.Status, r.Body)
				}
			}
			// Secret hygiene on every path: debug logs and metrics carry no
			// plaintext, token (JWTs start "eyJ") or key material.
			metrics := p.get("/metrics").Body
			p.stop() // after exit every log line has reached the buffer
			for _, where := range []struct{ name, text string }{{"logs", p.logs.String()}, {"metrics", metrics}} {
				for _, bad := range []string{"a secret", "another secret", "eyJ", "PRIVATE KEY", `"d":"`} {
					if strings.Contains(where.text, bad) {
						t.Fatalf("%s contain %q", where.name, bad)
					}
				}
			}
		})
	}
}

// A slow KBS answer for one secret delays neither cached hits nor other
// secrets: flights are per key and hits take none.
func TestSlowKBSDoesNotBlockOthers(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	if err := k.WriteCSI("default", "other", map[string][]byte{"fast": []byte("fast secret"), "slow": []byte("slow secret")}); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	if r := p.get(cocoOne); r.Status != 200 {
		t.Fatalf("warm: %d", r.Status)
	}
	warm := k.Counts().Resource
	k.SetFaults(kbs.Faults{Delay: 3 * time.Second, PathContains: "/other/slow"})
	slow := make(chan reply, 1)
	go func() {
		r, _ := doGet(context.Background(), p.Base+"/cdh/resource/default/other/slow")
		slow <- r
	}()
	testutil.Eventually(t, 10*time.Second, "the slow fetch to reach the KBS", func() bool { return k.Counts().Resource == warm+1 })
	start := time.Now()
	if r := p.get(cocoOne); r.Status != 200 || r.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("cached hit during a slow fetch: %d %q", r.Status, r.Header.Get("X-Cache"))
	}
	if r := p.get("/cdh/resource/default/other/fast"); r.Status != 200 || r.Body != "fast secret" {
		t.Fatalf("other secret during a slow fetch: %d %q", r.Status, r.Body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("hit and other fetch took %v while one secret was slow", d)
	}
	select {
	case r := <-slow:
		t.Fatalf("slow fetch finished early: %d", r.Status)
	default:
	}
	if r := <-slow; r.Status != 200 || r.Body != "slow secret" {
		t.Fatalf("slow secret: %d %q", r.Status, r.Body)
	}
}

// metric returns the value of one sample line of /metrics (0 when absent),
// e.g. `cdh_proxy_http_requests_total{route="resource",status="200"}`.
func metric(t *testing.T, p *proxyProc, sample string) float64 {
	t.Helper()
	v, _ := proc.Sample(p.get("/metrics").Body, sample)
	return v
}

func TestMetricsMove(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	testutil.Eventually(t, 10*time.Second, "startup attestation", func() bool { return metric(t, p, `cdh_proxy_attestations_total{result="ok"}`) == 1 })
	if exp := metric(t, p, "cdh_proxy_token_expiry_timestamp_seconds"); exp < float64(time.Now().Unix()) {
		t.Fatalf("token expiry %v is not in the future", exp)
	}
	p.get(cocoOne) // miss
	p.get(cocoOne) // hit
	p.get("/cdh/resource/default/akv/nope")
	p.get("/cdh/resource/default/../x")
	for sample, want := range map[string]float64{
		`cdh_proxy_http_requests_total{route="resource",status="200"}`: 2,
		`cdh_proxy_http_requests_total{route="resource",status="404"}`: 1,
		`cdh_proxy_http_requests_total{route="resource",status="400"}`: 1,
		`cdh_proxy_cache_hits_total`:                                   1,
		`cdh_proxy_cache_misses_total`:                                 2,
		`cdh_proxy_cache_fetches_total{result="error"}`:                1,
		`cdh_proxy_cache_entries`:                                      1,
		`cdh_proxy_attestations_total{result="ok"}`:                    1,
		`cdh_proxy_kbs_resource_requests_total`:                        2,
		`cdh_proxy_kbs_step_seconds_count{step="resource"}`:            2,
		`cdh_proxy_kbs_step_seconds_count{step="attest"}`:              1,
	} {
		if got := metric(t, p, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	r := p.get("/cdh/resource/default/akv/nope", "X-Request-Id", "req-42")
	if !strings.Contains(r.Body, `"request_id":"req-42"`) {
		t.Fatalf("request id not in the problem body: %s", r.Body)
	}
	// The child's stderr reaches the buffer through a pipe: wait for the line.
	testutil.Eventually(t, 5*time.Second, "request id in the log", func() bool { return strings.Contains(p.logs.String(), `"request_id":"req-42"`) })
}
