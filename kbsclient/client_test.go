package kbsclient

import (
	"testing/synctest"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"

	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

var coco = resource.Path{Repo: "default", Type: "akv", Tag: "coco_one"}

type fixture struct {
	kbs    *kbs.Server
	url    string
	store  kbs.TreeStore
	client *Client
}

// newTestKBS is a test KBS holding default/akv/coco_one = "a secret".
func newTestKBS(t *testing.T, kcfg kbs.Config) (*kbs.Server, kbs.TreeStore) {
	t.Helper()
	store := kbs.TreeStore{Dir: t.TempDir()}
	if err := store.Write("default", "akv", "coco_one", []byte("a secret")); err != nil {
		t.Fatal(err)
	}
	kcfg.Store = store
	srv, err := kbs.New(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, store
}

func newFixture(t *testing.T, kcfg kbs.Config, ccfg Config) *fixture {
	t.Helper()
	srv, store := newTestKBS(t, kcfg)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	ccfg.URL = ts.URL
	if ccfg.Attester == nil {
		ccfg.Attester = sample.Attester{}
	}
	c, err := New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &fixture{kbs: srv, url: ts.URL, store: store, client: c}
}

func TestResourceEachKeyAlgorithm(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyEC256, KeyEC521, KeyRSA256} {
		t.Run(string(alg), func(t *testing.T) {
			f := newFixture(t, kbs.Config{}, Config{KeyAlgorithm: alg})
			got, err := f.client.Resource(context.Background(), coco)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "a secret" {
				t.Fatalf("got %q", got)
			}
		})
	}
}

func TestJWKExactMembers(t *testing.T) {
	for alg, want := range map[KeyAlgorithm][]string{
		KeyEC256:  {"alg", "crv", "kty", "x", "y"},
		KeyEC521:  {"alg", "crv", "kty", "x", "y"},
		KeyRSA256: {"alg", "e", "kty", "n"},
	} {
		k, err := newTEEKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for m, v := range k.jwk {
			got = append(got, m)
			if m != "alg" && m != "kty" && m != "crv" && strings.ContainsAny(v, "=+/") {
				t.Errorf("%s: member %s = %q is not unpadded base64url", alg, m, v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: members %v, want %v", alg, got, want)
		}
		for _, m := range want {
			if _, ok := k.jwk[m]; !ok {
				t.Errorf("%s: missing member %s", alg, m)
			}
		}
		size := map[KeyAlgorithm]int{KeyEC256: 43, KeyEC521: 88}[alg] // ceil(32*4/3), ceil(66*4/3)
		if size != 0 && (len(k.jwk["x"]) != size || len(k.jwk["y"]) != size) {
			t.Errorf("%s: x/y not left-padded: %d/%d chars", alg, len(k.jwk["x"]), len(k.jwk["y"]))
		}
		if !strings.HasPrefix(k.String(), "[REDACTED") {
			t.Errorf("key String leaks")
		}
	}
}

func TestTokenReusedAcrossResources(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{})
	for i := range 20 {
		tag := "s" + string(rune('a'+i))
		if err := f.store.Write("default", "akv", tag, []byte(tag)); err != nil {
			t.Fatal(err)
		}
		got, err := f.client.Resource(context.Background(), resource.Path{Repo: "default", Type: "akv", Tag: tag})
		if err != nil || string(got) != tag {
			t.Fatalf("%s: %q %v", tag, got, err)
		}
	}
	if c := f.kbs.Counts(); c.Auth != 1 || c.Attest != 1 || c.Resource != 20 {
		t.Fatalf("counts = %+v, want 1 auth, 1 attest, 20 resource", c)
	}
}

func TestConcurrentCallersShareOneHandshake(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{})
	f.kbs.SetFaults(kbs.Faults{Delay: 50 * time.Millisecond, Only: []kbs.Endpoint{kbs.EndpointAuth}})
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			got, err := f.client.Resource(context.Background(), coco)
			if err == nil && string(got) != "a secret" {
				err = errors.New("wrong plaintext")
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
	if c := f.kbs.Counts(); c.Auth != 1 || c.Attest != 1 {
		t.Fatalf("counts = %+v, want exactly 1 auth and 1 attest", c)
	}
}

func TestTokenRefreshAndExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clk := testutil.NewClock()
		srv, c := newBubbleClient(t, kbs.Config{TokenLifetime: 100 * time.Second, Now: clk.Now},
			Config{Now: clk.Now, Rand: func() float64 { return 0.5 }}, nil) // refresh at 80 s
		ctx := context.Background()
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		clk.Advance(79 * time.Second)
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		if n := srv.Counts().Handshakes; n != 1 {
			t.Fatalf("handshakes before refresh point = %d, want 1", n)
		}
		// Past 80 %: the request is served with the old token while a
		// background handshake replaces it.
		clk.Advance(2 * time.Second)
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the background handshake has finished
		if n := c.Stats().Handshakes; n != 2 {
			t.Fatalf("handshakes after the refresh point = %d, want 2", n)
		}
		// Far past expiry of everything: a foreground handshake, no failure.
		clk.Advance(10 * time.Minute)
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		if n := srv.Counts().Handshakes; n != 3 {
			t.Fatalf("handshakes = %d, want 3", n)
		}
	})
}

func TestRefreshPointAndMargin(t *testing.T) {
	t0 := time.Unix(0, 0)
	for _, tt := range []struct {
		r    float64
		want time.Duration
	}{{0, 70 * time.Second}, {0.5, 80 * time.Second}, {0.999, 89*time.Second + 980*time.Millisecond}} {
		if got := refreshPoint(t0, 100*time.Second, tt.r).Sub(t0); got != tt.want {
			t.Errorf("refreshPoint(r=%v) = %v, want %v", tt.r, got, tt.want)
		}
	}
	s := &session{obtained: t0, expires: t0.Add(100 * time.Second)}
	if !s.usable(t0.Add(94 * time.Second)) {
		t.Error("token unusable 6 s before expiry")
	}
	if s.usable(t0.Add(96 * time.Second)) {
		t.Error("token still used within the 5 s margin")
	}
	var nilSession *session
	if nilSession.usable(t0) || !nilSession.needsRefresh(t0) {
		t.Error("nil session must be unusable and need refresh")
	}
}

func TestReattestOnceAfterTokenRejected(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{})
	ctx := context.Background()
	if _, err := f.client.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	// A KBS restart (new signing key) invalidates the token we hold.
	restarted := newFixture(t, kbs.Config{}, Config{})
	f.client.eps[0].base = mustParse(t, restarted.url)
	got, err := f.client.Resource(ctx, coco)
	if err != nil || string(got) != "a secret" {
		t.Fatalf("after KBS restart: %q %v", got, err)
	}
	if c := restarted.kbs.Counts(); c.Handshakes != 1 || c.Resource != 2 {
		t.Fatalf("restarted KBS counts = %+v, want 1 handshake, 2 resource GETs (401 then 200)", c)
	}
}

func TestTokenProblemTwiceIsNotLooped(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{})
	// Every resource GET answers 401 TokenVerifierError.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/resource/") {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"type":"https://github.com/confidential-containers/kbs/errors/TokenVerifierError","detail":"Token Verifier error"}`))
			return
		}
		f.kbs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.client.eps[0].base = mustParse(t, srv.URL)
	_, err := f.client.Resource(context.Background(), coco)
	var kerr *Error
	if !errors.As(err, &kerr) || kerr.Kind != AttestationFailed || kerr.KBSType != TypeTokenVerifier {
		t.Fatalf("err = %v, want AttestationFailed TokenVerifierError", err)
	}
	if c := f.kbs.Counts(); c.Handshakes != 2 {
		t.Fatalf("handshakes = %d, want 2 (one re-attest, no loop)", c.Handshakes)
	}
}

func TestClassifiedFailures(t *testing.T) {
	tests := []struct {
		name       string
		kcfg       kbs.Config
		path       resource.Path
		faults     kbs.Faults
		wantKind   Kind
		wantType   string
		maxHandsh  uint64
		maxResGets uint64
	}{
		{name: "policy deny", kcfg: kbs.Config{Policy: kbs.Policy{DenySample: true}}, path: coco,
			wantKind: Denied, wantType: TypePolicyDeny, maxHandsh: 1, maxResGets: 1},
		{name: "missing resource", path: resource.Path{Repo: "default", Type: "akv", Tag: "nope"},
			wantKind: NotFound, wantType: TypePluginInternal, maxHandsh: 1, maxResGets: 1},
		{name: "kbs 500 on auth", path: coco, faults: kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointAuth}},
			wantKind: Unavailable, wantType: "InjectedFault", maxHandsh: 0, maxResGets: 0},
		{name: "garbage challenge", path: coco, faults: kbs.Faults{Body: []byte("<html>"), Only: []kbs.Endpoint{kbs.EndpointAuth}},
			wantKind: BadResponse, maxHandsh: 0},
		{name: "garbage resource", path: coco, faults: kbs.Faults{Body: []byte(`{"protected":"x"}`), Only: []kbs.Endpoint{kbs.EndpointResource}},
			wantKind: BadResponse, maxHandsh: 1, maxResGets: 1},
		{name: "oversize resource", path: coco, faults: kbs.Faults{Body: make([]byte, 2048), Only: []kbs.Endpoint{kbs.EndpointResource}},
			wantKind: BadResponse, maxHandsh: 1, maxResGets: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.kcfg, Config{MaxResponseBytes: 1024})
			f.kbs.SetFaults(tt.faults)
			_, err := f.client.Resource(context.Background(), tt.path)
			var kerr *Error
			if !errors.As(err, &kerr) || kerr.Kind != tt.wantKind || kerr.KBSType != tt.wantType {
				t.Fatalf("err = %v (%#v), want kind %v type %q", err, kerr, tt.wantKind, tt.wantType)
			}
			if c := f.kbs.Counts(); c.Handshakes > tt.maxHandsh || c.Resource > tt.maxResGets {
				t.Fatalf("counts = %+v: retried a final failure", c)
			}
		})
	}
}

func TestTamperedReportDataRejected(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{Attester: tamper{}})
	_, err := f.client.Resource(context.Background(), coco)
	var kerr *Error
	if !errors.As(err, &kerr) || kerr.Kind != AttestationFailed || kerr.Op != "attest" || !strings.Contains(kerr.KBSDetail, "report_data does not match") {
		t.Fatalf("err = %v, want attest refused for report_data mismatch", err)
	}
	if c := f.kbs.Counts(); c.Handshakes != 0 || c.Resource != 0 {
		t.Fatalf("counts = %+v", c)
	}
}

// tamper binds a report_data that differs from the real binding in one bit.
type tamper struct{ sample.Attester }

func (tamper) Evidence(ctx context.Context, rd []byte) (json.RawMessage, error) {
	bad := append([]byte(nil), rd...)
	bad[0] ^= 1
	return sample.Attester{}.Evidence(ctx, bad)
}

func TestWaiterLeavesOnOwnDeadline(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{})
	f.kbs.SetFaults(kbs.Faults{Delay: 2 * time.Second, Only: []kbs.Endpoint{kbs.EndpointAuth}})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := f.client.Resource(ctx, coco)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{URL: "http://x"},
		{URL: "ftp://x", Attester: sample.Attester{}},
		{URL: "http://", Attester: sample.Attester{}},
		{URL: "http://u:p@x", Attester: sample.Attester{}},
		{URL: "http://x", Attester: sample.Attester{}, KeyAlgorithm: "RSA1_5"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestBackoff(t *testing.T) {
	for _, tt := range []struct {
		attempt  int
		r        float64
		min, max time.Duration
	}{
		{0, 0, 50 * time.Millisecond, 50 * time.Millisecond},
		{0, 0.999, 50 * time.Millisecond, 100 * time.Millisecond},
		{1, 0, 100 * time.Millisecond, 100 * time.Millisecond},
		{4, 0.5, 1200 * time.Millisecond, 1200 * time.Millisecond},
		{10, 0.999, time.Second, 2 * time.Second}, // capped
	} {
		if got := backoff(tt.attempt, tt.r); got < tt.min || got > tt.max {
			t.Errorf("backoff(%d, %v) = %v, want in [%v, %v]", tt.attempt, tt.r, got, tt.min, tt.max)
		}
	}
}

func TestTransientFailuresRetried(t *testing.T) {
	f := newFixture(t, kbs.Config{}, Config{Rand: func() float64 { return 0 }})
	// Two 500s, then the KBS recovers: the call succeeds.
	f.kbs.SetFaults(kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointResource}, Times: 2})
	got, err := f.client.Resource(context.Background(), coco)
	if err != nil || string(got) != "a secret" {
		t.Fatalf("after two 500s: %q %v", got, err)
	}
	if c := f.kbs.Counts(); c.Resource != 3 {
		t.Fatalf("resource requests = %d, want 3", c.Resource)
	}
	// A handshake failure is transient too.
	g := newFixture(t, kbs.Config{}, Config{Rand: func() float64 { return 0 }})
	g.kbs.SetFaults(kbs.Faults{Status: 503, Only: []kbs.Endpoint{kbs.EndpointAuth}, Times: 1})
	if got, err := g.client.Resource(context.Background(), coco); err != nil || string(got) != "a secret" {
		t.Fatalf("after a failed auth: %q %v", got, err)
	}
	// Bounded: a KBS that keeps failing gets MaxRetries+1 attempts, then the error.
	h := newFixture(t, kbs.Config{}, Config{Rand: func() float64 { return 0 }, MaxRetries: 2})
	h.kbs.SetFaults(kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointResource}})
	_, err = h.client.Resource(context.Background(), coco)
	if kerr := (*Error)(nil); !errors.As(err, &kerr) || kerr.Kind != Unavailable {
		t.Fatalf("persistent 500: %v", err)
	}
	if c := h.kbs.Counts(); c.Resource != 3 {
		t.Fatalf("resource requests = %d, want 3 (1 + 2 retries)", c.Resource)
	}
	// Final failures are not retried.
	d := newFixture(t, kbs.Config{Policy: kbs.Policy{DenySample: true}}, Config{})
	_, _ = d.client.Resource(context.Background(), coco)
	if c := d.kbs.Counts(); c.Resource != 1 {
		t.Fatalf("policy deny retried: %d requests", c.Resource)
	}
}

// A PolicyDeny on a token older than the latest runtime measurement
// re-attests once (the new evidence may show what the policy asks for);
// on a token that has seen every measurement it is final.
func TestPolicyDenyReattestsAfterMeasurement(t *testing.T) {
	var grown atomic.Int64
	f := newFixture(t, kbs.Config{Policy: kbs.Policy{Allow: []string{"default/akv/other"}}}, Config{Measured: grown.Load})
	deny := func(wantHandshakes uint64) {
		t.Helper()
		_, err := f.client.Resource(context.Background(), coco)
		var kerr *Error
		if !errors.As(err, &kerr) || kerr.KBSType != TypePolicyDeny {
			t.Fatalf("err = %v, want PolicyDeny", err)
		}
		if got := f.client.Stats().Handshakes; got != wantHandshakes {
			t.Fatalf("%d handshakes, want %d", got, wantHandshakes)
		}
	}
	deny(1) // attests, denied: final
	deny(1) // same token, nothing measured since: no new attestation
	grown.Store(100)
	deny(2) // measured since: one new attestation, still denied
	deny(2) // the new token has seen it all
	// Allowed once the KBS sees what it wants: the re-attested token works.
	f.kbs.SetPolicy(kbs.Policy{})
	if _, err := f.client.Resource(context.Background(), coco); err != nil {
		t.Fatal(err)
	}
}
