package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

const cocoOne = "/cdh/resource/default/akv/coco_one"

// The seed scenario of the mission: curl …/default/akv/coco_one → "a secret".
func TestSeedScenario(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxyBin(t, proxyBin, k, nil, "--attester", "sample", "--kbs-url", k.URL) // a process: SIGHUP below
	r := p.get(cocoOne)
	if r.Status != 200 || r.Body != "a secret" {
		t.Fatalf("GET coco_one = %d %q", r.Status, r.Body)
	}
	if ct, cc := r.Header.Get("Content-Type"), r.Header.Get("Cache-Control"); ct != "application/octet-stream" || cc != "no-store" {
		t.Fatalf("headers Content-Type=%q Cache-Control=%q", ct, cc)
	}
	if r := p.get("/cdh/resource/default/akv/coco_two"); r.Status != 200 || r.Body != "another secret" {
		t.Fatalf("GET coco_two = %d %q", r.Status, r.Body)
	}
	if r := p.get(cocoOne); r.Header.Get("X-Cache") != "HIT" || r.Body != "a secret" {
		t.Fatalf("second GET: X-Cache=%q body %q", r.Header.Get("X-Cache"), r.Body)
	}
	// SIGHUP is ignored (documented): the daemon keeps serving.
	if err := p.p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// No wait needed: a signal the process does not ignore is acted on
	// before it runs again, so it could not answer this request.
	if r := p.get(cocoOne); r.Status != 200 {
		t.Fatalf("after SIGHUP: %d", r.Status)
	}
}

func TestKeyAlgorithms(t *testing.T) {
	for _, alg := range []string{"ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256"} {
		t.Run(alg, func(t *testing.T) {
			k := newKBS(t, kbs.Config{})
			p := startProxy(t, k, nil, "--kbs-url", k.URL, "--tee-key-alg", alg)
			if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
				t.Fatalf("%s: %d %q", alg, r.Status, r.Body)
			}
		})
	}
}

func TestCoalescingThousandConcurrentMisses(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	// Hold the resource answer long enough that all requests pile up on one flight.
	k.SetFaults(kbs.Faults{Delay: 300 * time.Millisecond, Only: []kbs.Endpoint{kbs.EndpointResource}})
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			r, err := doGet(context.Background(), p.Base+cocoOne)
			if err == nil && (r.Status != 200 || r.Body != "a secret") {
				err = fmt.Errorf("got %d %q", r.Status, r.Body)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if c := k.Counts(); c.Auth != 1 || c.Attest != 1 || c.Resource != 1 {
		t.Fatalf("KBS counts = %+v, want exactly 1 auth, 1 attest, 1 resource", c)
	}
}

func TestOneAttestationPerTokenLifetime(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	files := map[string][]byte{}
	for i := range 20 {
		files[fmt.Sprintf("s%02d", i)] = []byte(fmt.Sprintf("secret-%02d", i))
	}
	if err := k.WriteCSI("multi", "kv", files); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	for i := range 200 {
		name := fmt.Sprintf("s%02d", i%20)
		if r := p.get("/cdh/resource/multi/kv/" + name); r.Status != 200 || r.Body != string(files[name]) {
			t.Fatalf("GET %s = %d %q", name, r.Status, r.Body)
		}
	}
	if c := k.Counts(); c.Handshakes != 1 || c.Auth != 1 || c.Resource != 20 {
		t.Fatalf("KBS counts = %+v, want 1 attestation and 20 resource fetches", c)
	}
}

func TestTokenExpiryReattestsWithoutFailure(t *testing.T) {
	k := newKBS(t, kbs.Config{TokenLifetime: 2 * time.Second})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-ttl", "0")
	// Request without pause until the token has been replaced twice: every
	// request across both refreshes must succeed.
	n := 0
	testutil.Eventually(t, 30*time.Second, "two token refreshes", func() bool {
		if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
			t.Fatalf("request %d failed across token expiry: %d %s", n, r.Status, r.Body)
		}
		n++
		return k.Counts().Handshakes >= 3
	})
	p.stop() // after exit every log line has reached the buffer
	if strings.Contains(p.logs.String(), "TokenVerifierError") {
		t.Fatalf("an expired token reached the KBS; refresh must come first:\n%s", p.logs)
	}
}

func TestRotation(t *testing.T) {
	type rotation struct {
		name   string
		layout string
		ttl    time.Duration
		within time.Duration
	}
	var cases []rotation
	for _, layout := range []string{layoutLocalFs, layoutTree} {
		cases = append(cases, rotation{layout + "/ttl 1s", layout, time.Second, 3 * time.Second}, rotation{layout + "/ttl 0", layout, 0, 0})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := newKBSLayout(t, kbs.Config{}, tc.layout)
			p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-ttl", tc.ttl.String())
			if r := p.get(cocoOne); r.Body != "a secret" {
				t.Fatalf("before rotation: %q", r.Body)
			}
			old, next := "a secret", strings.Repeat("rotated secret value ", 50)
			// Readers hammer the secret while it rotates: every answer must be
			// exactly the old or the new value, never a mix.
			stop := make(chan struct{})
			errs := make(chan error, 8)
			var reads atomic.Int64
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						r, err := doGet(context.Background(), p.Base+cocoOne)
						reads.Add(1)
						if err != nil || r.Status != 200 || (r.Body != old && r.Body != next) {
							errs <- fmt.Errorf("torn or failed read during rotation: %v %d %.40q", err, r.Status, r.Body)
							return
						}
					}
				})
			}
			// Rotate only once the readers are reading.
			testutil.Eventually(t, 10*time.Second, "readers started", func() bool { return reads.Load() >= 8 })
			rotated := time.Now()
			if err := k.WriteCSI("default", "akv", map[string][]byte{
				"coco_one": []byte(next), "coco_two": []byte("another secret"),
			}); err != nil {
				t.Fatal(err)
			}
			if tc.ttl == 0 {
				if r := p.get(cocoOne); r.Body != next {
					t.Fatalf("TTL 0: first GET after rotation = %.40q, want the new value", r.Body)
				}
			} else {
				testutil.Eventually(t, tc.within, "rotated value", func() bool { return p.get(cocoOne).Body == next })
				if waited := time.Since(rotated); waited > tc.ttl+time.Second {
					t.Fatalf("new value after %v, want within TTL %v (+1 s slack)", waited, tc.ttl)
				}
			}
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

func TestNoCacheForcesRefetch(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-ttl", "1h")
	p.get(cocoOne)
	p.get(cocoOne)
	if c := k.Counts(); c.Resource != 1 {
		t.Fatalf("resource fetches = %d, want 1", c.Resource)
	}
	if r := p.get(cocoOne, "Cache-Control", "no-cache"); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("no-cache GET: %d X-Cache=%q", r.Status, r.Header.Get("X-Cache"))
	}
	if c := k.Counts(); c.Resource != 2 {
		t.Fatalf("resource fetches after no-cache = %d, want 2", c.Resource)
	}
}

// problemBody is the RFC 9457 body cdh-proxy sends.
type problemBody struct {
	Type, Title, Detail, Resource string
	Status                        int
	KBSType                       string `json:"kbs_type"`
}

func TestErrorTable(t *testing.T) {
	deadURL := "https://" + deadAddr(t)

	tests := []struct {
		name       string
		kcfg       kbs.Config
		faults     kbs.Faults
		dead       bool
		args       []string
		path       string
		hdr        []string
		wantStatus int
		wantType   string
		wantKBS    string
	}{
		{name: "bad path two segments", path: "/cdh/resource/default/akv", wantStatus: 400, wantType: "urn:cdh-proxy:bad-path"},
		{name: "bad path dotdot", path: "/cdh/resource/default/%2E%2E/coco_one", wantStatus: 400, wantType: "urn:cdh-proxy:bad-path"},
		{name: "bad path escaped slash", path: "/cdh/resource/default/akv%2Fx/coco_one", wantStatus: 400, wantType: "urn:cdh-proxy:bad-path"},
		{name: "bad path empty segment", path: "/cdh/resource/default//coco_one", wantStatus: 400, wantType: "urn:cdh-proxy:bad-path"},
		{name: "origin header", path: cocoOne, hdr: []string{"Origin", "http://evil.example"}, wantStatus: 403, wantType: "urn:cdh-proxy:forbidden"},
		{name: "policy deny", kcfg: kbs.Config{Policy: kbs.Policy{DenySample: true}}, path: cocoOne,
			wantStatus: 403, wantType: "urn:cdh-proxy:kbs-policy-denied", wantKBS: "PolicyDeny"},
		{name: "missing resource", path: "/cdh/resource/default/akv/nope", wantStatus: 404, wantType: "urn:cdh-proxy:kbs-not-found", wantKBS: "PluginInternalError"},
		{name: "garbage JWE", faults: kbs.Faults{Body: []byte(`{"protected":"e30","iv":"","ciphertext":"","tag":""}`), Only: []kbs.Endpoint{kbs.EndpointResource}},
			path: cocoOne, wantStatus: 502, wantType: "urn:cdh-proxy:kbs-bad-response"},
		{name: "KBS unreachable", dead: true, path: cocoOne, wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable"},
		{name: "KBS 500", faults: kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointResource}}, path: cocoOne,
			wantStatus: 503, wantType: "urn:cdh-proxy:kbs-unavailable", wantKBS: "InjectedFault"},
		{name: "attestation refused", faults: kbs.Faults{Status: 401, Only: []kbs.Endpoint{kbs.EndpointAttest}}, path: cocoOne,
			wantStatus: 503, wantType: "urn:cdh-proxy:attestation-failed", wantKBS: "InjectedFault"},
		{name: "budget exceeded", faults: kbs.Faults{Delay: 3 * time.Second, Only: []kbs.Endpoint{kbs.EndpointResource}},
			args: []string{"--budget", "500ms"}, path: cocoOne, wantStatus: 504, wantType: "urn:cdh-proxy:timeout"},
		{name: "unknown route", path: "/cdh/other", wantStatus: 404, wantType: "urn:cdh-proxy:not-found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKBS(t, tt.kcfg)
			k.SetFaults(tt.faults)
			url := k.URL
			if tt.dead {
				url = deadURL
			}
			p := startProxy(t, k, nil, append([]string{"--kbs-url", url}, tt.args...)...)
			start := time.Now()
			r := p.get(tt.path, tt.hdr...)
			if r.Status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.Status, tt.wantStatus, r.Body)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			var pb problemBody
			if err := json.Unmarshal([]byte(r.Body), &pb); err != nil {
				t.Fatalf("body %q: %v", r.Body, err)
			}
			if pb.Type != tt.wantType || pb.Status != tt.wantStatus || pb.Title == "" || pb.Detail == "" || pb.KBSType != tt.wantKBS {
				t.Fatalf("problem %+v, want type %s kbs_type %q", pb, tt.wantType, tt.wantKBS)
			}
			if tt.wantStatus == 504 && time.Since(start) > 2*time.Second {
				t.Fatalf("504 took %v, want about the 500ms budget", time.Since(start))
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	resp, err := client.Post(p.Base+cocoOne, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST = %d Allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestConfigSources(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	pem, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("AA_KBC_PARAMS", func(t *testing.T) {
		p := startProxy(t, k, []string{"AA_KBC_PARAMS=cc_kbc::" + k.URL})
		if r := p.get(cocoOne); r.Body != "a secret" {
			t.Fatalf("%d %q", r.Status, r.Body)
		}
	})
	t.Run("cdh.toml with kbs_cert", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "cdh.toml")
		toml := fmt.Sprintf("socket = \"unix:///run/confidential-containers/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\nurl = %q\nkbs_cert = '''\n%s'''\n", k.URL, pem)
		if err := os.WriteFile(f, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
		// No --kbs-cert: the CA comes from the file only.
		p := startProxy(t, nil, nil, "-c", f)
		if r := p.get(cocoOne); r.Body != "a secret" {
			t.Fatalf("%d %q\n%s", r.Status, r.Body, p.logs)
		}
	})
	t.Run("wrong CA is refused", func(t *testing.T) {
		p := startProxy(t, nil, nil, "--kbs-url", k.URL)
		if r := p.get(cocoOne); r.Status != 503 || !strings.Contains(r.Body, "certificate") {
			t.Fatalf("without the KBS CA: %d %s", r.Status, r.Body)
		}
	})
}

func TestSecretsNeverLogged(t *testing.T) {
	k := newKBS(t, kbs.Config{TokenLifetime: 2 * time.Second})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-ttl", "0")
	p.get(cocoOne)
	p.get("/cdh/resource/default/akv/nope")
	k.SetFaults(kbs.Faults{Body: []byte(`{"protected":"e30"}`), Only: []kbs.Endpoint{kbs.EndpointResource}})
	p.get(cocoOne)
	p.stop()
	logs := p.logs.String()
	for _, bad := range []string{"a secret", "eyJ", "PRIVATE KEY", `"d":`} {
		if strings.Contains(logs, bad) {
			t.Fatalf("logs contain %q:\n%s", bad, logs)
		}
	}
	mustContain(t, logs, `"msg":"attested"`)
}

func TestStartupWithoutKBSAndReadiness(t *testing.T) {
	url := "http://" + deadAddr(t)
	start := time.Now()
	p := startProxy(t, nil, nil, "--kbs-url", url)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("startup took %v with the KBS down", d)
	}
	if r := p.get("/healthz"); r.Status != 200 {
		t.Fatalf("healthz %d", r.Status)
	}
	if r := p.get("/readyz"); r.Status != 503 {
		t.Fatalf("readyz without token = %d, want 503", r.Status)
	}
	k := newKBS(t, kbs.Config{})
	q := startProxy(t, k, nil, "--kbs-url", k.URL)
	testutil.Eventually(t, 10*time.Second, "readyz 200", func() bool { return q.get("/readyz").Status == 200 })
}

func TestRefusesWithoutAttester(t *testing.T) {
	out, err := execProxy("serve", "--kbs-url", "http://127.0.0.1:1", "--bind", "127.0.0.1:0")
	if err == nil {
		t.Fatal("started with --attester auto and no TEE")
	}
	mustContain(t, out, "--attester sample")
}

func TestStaleIfErrorThroughBinary(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-ttl", "1s", "--stale-if-error", "1m", "--budget", "2s")
	if r := p.get(cocoOne); r.Body != "a secret" {
		t.Fatalf("warm: %d %s", r.Status, r.Body)
	}
	k.SetFaults(kbs.Faults{Status: 500})
	// Within the TTL the copy is a plain hit; once it lapses the refetch
	// fails and the copy is served stale.
	var r reply
	testutil.Eventually(t, 10*time.Second, "the TTL to lapse", func() bool {
		r = p.get(cocoOne)
		return r.Header.Get("X-Cache") != "HIT"
	})
	if r.Status != 200 || r.Body != "a secret" || r.Header.Get("X-Cache") != "STALE" || !strings.Contains(r.Header.Get("Warning"), "111") {
		t.Fatalf("KBS failing: %d %q X-Cache=%q Warning=%q", r.Status, r.Body, r.Header.Get("X-Cache"), r.Header.Get("Warning"))
	}
	// Without the flag the same failure is a 503.
	q := startProxy(t, k, nil, "--kbs-url", k.URL)
	if r := q.get(cocoOne); r.Status != 503 {
		t.Fatalf("without --stale-if-error: %d", r.Status)
	}
}

// SIGTERM lets a request in flight finish, then the process exits 0.
func TestGracefulDrain(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	k.SetFaults(kbs.Faults{Delay: time.Second, Only: []kbs.Endpoint{kbs.EndpointResource}})
	p := startProxyBin(t, proxyBin, k, nil, "--attester", "sample", "--kbs-url", k.URL) // a process: SIGTERM below
	res := make(chan reply, 1)
	go func() {
		r, err := doGet(context.Background(), p.Base+cocoOne)
		if err != nil {
			r = reply{Status: -1, Body: err.Error()}
		}
		res <- r
	}()
	testutil.Eventually(t, 10*time.Second, "the request to reach the KBS", func() bool { return k.Counts().Resource == 1 })
	if err := p.p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if r := <-res; r.Status != 200 || r.Body != "a secret" {
		t.Fatalf("in-flight request during shutdown: %d %q", r.Status, r.Body)
	}
	if err := p.p.Stop(15 * time.Second); err != nil {
		t.Fatalf("exit after drain: %v", err)
	}
	if _, err := doGet(context.Background(), p.Base+"/healthz"); err == nil {
		t.Fatal("still accepting after SIGTERM")
	}
}
