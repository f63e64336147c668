package kbsclient

import (
	"errors"
	"testing/synctest"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"

	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// switchable is a test KBS that can be taken down (every answer 503, as a
// KBS behind a load balancer with no backend) and brought back.
type switchable struct {
	*kbs.Server
	url     string
	handler http.Handler
	down    atomic.Bool
}

// serve puts s on a real loopback listener (for tests outside a bubble).
func (s *switchable) serve(t *testing.T) *switchable {
	t.Helper()
	ts := httptest.NewServer(s.handler)
	t.Cleanup(ts.Close)
	s.url = ts.URL
	return s
}

func newSwitchable(t *testing.T, cfg kbs.Config) *switchable {
	t.Helper()
	if cfg.Plugins == nil {
		cfg.Plugins = kbs.DefaultPlugins()
	}
	srv, _ := newTestKBS(t, cfg)
	s := &switchable{Server: srv}
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	})
	return s
}

func newMulti(t *testing.T, cfg Config, urls ...string) *Client {
	t.Helper()
	cfg.URL, cfg.URLs = urls[0], urls[1:]
	if cfg.Attester == nil {
		cfg.Attester = sample.Attester{}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestPluginAnswers(t *testing.T) {
	k := newSwitchable(t, kbs.Config{Policy: kbs.Policy{DenyPlugins: []string{"denied"}}, Plugins: map[string]kbs.Plugin{
		"sample": kbs.SamplePlugin(), "credential": kbs.CredentialPlugin(), "denied": kbs.SamplePlugin(),
	}}).serve(t)
	c := newMulti(t, Config{}, k.url)
	ctx := context.Background()
	got, err := c.Plugin(ctx, resource.Plugin{Name: "sample", Path: "anything"})
	if err != nil || string(got) != "sample plugin response" {
		t.Fatalf("plain plugin: %q %v", got, err)
	}
	for i := 1; i <= 2; i++ {
		got, err = c.Plugin(ctx, resource.Plugin{Name: "credential", Path: "a/b", Query: "name=pod&ip=10.0.0.1"})
		want := "credential " + string(rune('0'+i)) + " for /a/b?ip=10.0.0.1&name=pod"
		if err != nil || string(got) != want {
			t.Fatalf("encrypting plugin call %d: %q %v, want %q (decrypted, query forwarded)", i, got, err, want)
		}
	}
	for _, tc := range []struct {
		p    resource.Plugin
		kind Kind
	}{
		{resource.Plugin{Name: "nebula-ca", Path: "credential"}, PluginNotFound},
		{resource.Plugin{Name: "credential", Path: "missing"}, NotFound},
		{resource.Plugin{Name: "denied", Path: "x"}, Denied},
	} {
		_, err := c.Plugin(ctx, tc.p)
		if KindOf(err) != tc.kind {
			t.Errorf("%v: %v (kind %v), want kind %v", tc.p, err, KindOf(err), tc.kind)
		}
	}
	if _, err := c.Plugin(ctx, resource.Plugin{Name: "sample", Path: "../x"}); err == nil {
		t.Fatal("bad plugin path accepted")
	}
	if n := k.Counts().Handshakes; n != 1 {
		t.Fatalf("%d handshakes: plugin calls must share the token", n)
	}
}

func TestFailoverFirstDownAtStart(t *testing.T) {
	a, b := newSwitchable(t, kbs.Config{}).serve(t), newSwitchable(t, kbs.Config{}).serve(t)
	a.down.Store(true)
	// No retries: moving to the next endpoint is not a retry.
	c := newMulti(t, Config{MaxRetries: -1}, a.url, b.url)
	got, err := c.Resource(context.Background(), coco)
	if err != nil || string(got) != "a secret" {
		t.Fatalf("%q %v", got, err)
	}
	st := c.Stats()
	if st.Failovers != 1 || !st.Endpoints[1].Active || st.Endpoints[0].Active || st.Endpoints[1].Handshakes != 1 || st.Endpoints[0].HandshakeErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFailoverAfterWarmupNeverSendsTokenToOtherKBS(t *testing.T) {
	a, b := newSwitchable(t, kbs.Config{}).serve(t), newSwitchable(t, kbs.Config{}).serve(t)
	c := newMulti(t, Config{MaxRetries: -1}, a.url, b.url)
	ctx := context.Background()
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	a.down.Store(true)
	got, err := c.Resource(ctx, coco)
	if err != nil || string(got) != "a secret" {
		t.Fatalf("after the first KBS died: %q %v", got, err)
	}
	// b saw its own handshake and one resource GET with its own token: a
	// token of a's would have drawn a 401 and a second GET.
	if n := b.Counts(); n.Handshakes != 1 || n.Resource != 1 {
		t.Fatalf("second KBS counts %+v", n)
	}
}

func TestFailbackAfterCoolOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := newSwitchable(t, kbs.Config{}), newSwitchable(t, kbs.Config{})
		clk := testutil.NewClock()
		c := newMulti(t, Config{FailbackAfter: time.Minute, Now: clk.Now,
			HTTPClient: &http.Client{Transport: hostTransport{"kbs-a.invalid": a, "kbs-b.invalid": b}}},
			"http://kbs-a.invalid", "http://kbs-b.invalid")
		ctx := context.Background()
		a.down.Store(true)
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		a.down.Store(false)
		// Within the cool-off the client stays on b.
		if _, err := c.Resource(ctx, coco); err != nil || a.Counts().Auth != 0 {
			t.Fatalf("within cool-off: %v, first KBS auth count %d", err, a.Counts().Auth)
		}
		clk.Advance(time.Minute + time.Second)
		// After it, a request is still served from b while a handshake with a
		// runs in the background; once a holds the token, requests go there.
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the background handshake with a has finished
		if a.Counts().Handshakes != 1 || !c.Stats().Endpoints[0].Active {
			t.Fatalf("no move back to the first KBS: %+v %+v", a.Counts(), c.Stats().Endpoints)
		}
		before := b.Counts().Resource
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
		if a.Counts().Resource != 1 || b.Counts().Resource != before {
			t.Fatalf("after failback: first KBS %d resource GETs, second %d → %d", a.Counts().Resource, before, b.Counts().Resource)
		}
	})
}

// hostTransport serves each host with its switchable KBS in memory: no
// sockets, so a client can run in a synctest bubble.
type hostTransport map[string]*switchable

func (h hostTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	k, ok := h[r.URL.Host]
	if !ok {
		return nil, errors.New("no such host")
	}
	return handlerTransport{h: k.handler}.RoundTrip(r)
}

func TestDenialAndNotFoundNeverFailOver(t *testing.T) {
	a := newSwitchable(t, kbs.Config{Policy: kbs.Policy{Allow: []string{"default/akv/other"}}}).serve(t)
	b := newSwitchable(t, kbs.Config{}).serve(t)
	c := newMulti(t, Config{}, a.url, b.url)
	ctx := context.Background()
	if _, err := c.Resource(ctx, coco); KindOf(err) != Denied {
		t.Fatalf("denied: %v", err)
	}
	if _, err := c.Resource(ctx, resource.Path{Repo: "default", Type: "akv", Tag: "other"}); KindOf(err) != NotFound {
		t.Fatalf("missing: %v", err)
	}
	if _, err := c.Plugin(ctx, resource.Plugin{Name: "nope", Path: "x"}); KindOf(err) != PluginNotFound {
		t.Fatalf("no plugin: %v", err)
	}
	if n := b.Counts(); n.Auth != 0 || c.Stats().Failovers != 0 {
		t.Fatalf("second KBS contacted after a denial/404: %+v", n)
	}
}

func TestAllEndpointsDown(t *testing.T) {
	a, b := newSwitchable(t, kbs.Config{}).serve(t), newSwitchable(t, kbs.Config{}).serve(t)
	a.down.Store(true)
	b.down.Store(true)
	c := newMulti(t, Config{MaxRetries: -1}, a.url, b.url)
	_, err := c.Resource(context.Background(), coco)
	if KindOf(err) != Unavailable || !strings.Contains(err.Error(), b.url) {
		t.Fatalf("all down: %v (want Unavailable naming the last KBS asked)", err)
	}
}

func TestFlappingEndpointIsPassedOverUntilCoolOff(t *testing.T) {
	a, b := newSwitchable(t, kbs.Config{}).serve(t), newSwitchable(t, kbs.Config{}).serve(t)
	clk := testutil.NewClock()
	c := newMulti(t, Config{FailbackAfter: time.Minute, Now: clk.Now, MaxRetries: -1}, a.url, b.url)
	ctx := context.Background()
	for i := range 6 {
		a.down.Store(i%2 == 0) // up, down, up, … on every request
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := c.Stats().Endpoints[0].Requests; n != 1 || c.Stats().Failovers != 1 {
		t.Fatalf("flapping KBS: %d requests to it, %d failovers; want 1 and 1 within one cool-off", n, c.Stats().Failovers)
	}
}

func TestProtocolMismatchNamesBothSides(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"type":"https://github.com/confidential-containers/kbs/errors/AttestationError","detail":"Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.5.0 while the request is 0.4.0"}`))
	}))
	t.Cleanup(ts.Close)
	c := newMulti(t, Config{}, ts.URL)
	_, err := c.Resource(context.Background(), coco)
	if KindOf(err) != ProtocolMismatch || !strings.Contains(err.Error(), "cdh-proxy speaks KBS protocol 0.4.0") || !strings.Contains(err.Error(), "expect =0.5.0") {
		t.Fatalf("%v", err)
	}
	if n := c.Stats().ProtocolMismatches; n != 1 {
		t.Fatalf("mismatches %d", n)
	}
}

func TestDialsByHostNameAndDropsIdleOnFailure(t *testing.T) {
	k := newSwitchable(t, kbs.Config{}).serve(t)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(k.url, "http://"))
	var mu sync.Mutex
	var dialed []string
	d := &net.Dialer{}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return d.DialContext(ctx, network, addr)
	}}}
	c := newMulti(t, Config{HTTPClient: hc}, "http://localhost:"+port)
	ctx := context.Background()
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	// Warm: the same connections serve further requests.
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	before := len(dialed)
	mu.Unlock()
	k.SetFaults(kbs.Faults{Status: http.StatusBadGateway, Only: []kbs.Endpoint{kbs.EndpointResource}, Times: 1})
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialed) <= before {
		t.Fatalf("dials %d before the 502, %d after: the retry reused an idle connection to the failed KBS", before, len(dialed))
	}
	for _, a := range dialed {
		if a != "localhost:"+port {
			t.Fatalf("dialed %q: want the host name on every new connection", a)
		}
	}
}

// With one endpoint a transient failure is retried with the same token: a
// 5xx says nothing about the token, and there is nowhere to move to.
func TestSingleEndpointKeepsTokenAcrossTransientFailures(t *testing.T) {
	k := newSwitchable(t, kbs.Config{}).serve(t)
	c := newMulti(t, Config{Rand: func() float64 { return 0 }}, k.url)
	ctx := context.Background()
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	k.SetFaults(kbs.Faults{Status: http.StatusBadGateway, Only: []kbs.Endpoint{kbs.EndpointResource}, Times: 2})
	for range 3 {
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
	}
	if n := k.Counts(); n.Handshakes != 1 || n.Resource != 6 {
		t.Fatalf("%+v: a transient failure must not cost an attestation (want 1 handshake, 6 resource GETs)", n)
	}
}

// An endpoint that answers again is no longer passed over.
func TestEndpointUpAgainAfterSuccess(t *testing.T) {
	a, b := newSwitchable(t, kbs.Config{}).serve(t), newSwitchable(t, kbs.Config{}).serve(t)
	c := newMulti(t, Config{MaxRetries: -1}, a.url, b.url)
	ctx := context.Background()
	if _, err := c.Resource(ctx, coco); err != nil {
		t.Fatal(err)
	}
	b.SetFaults(kbs.Faults{Status: http.StatusBadGateway, Only: []kbs.Endpoint{kbs.EndpointResource}, Times: 1})
	a.down.Store(true)
	// a fails → b; b's first resource GET fails → back to a, still down,
	// then b answers: the call may fail, but b must not stay passed over.
	_, _ = c.Resource(ctx, coco)
	a.down.Store(false)
	before := b.Counts().Handshakes
	for range 3 {
		if _, err := c.Resource(ctx, coco); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.Counts().Handshakes + a.Counts().Handshakes; n > before+2 {
		t.Fatalf("handshakes kept happening: %d", n)
	}
}
