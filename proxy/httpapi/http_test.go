package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// fakeKBS answers from a map or with a fixed error.
type fakeKBS struct {
	data    map[string]string
	err     error
	plugins atomic.Int64 // Plugin calls
}

// Plugin answers data["plugin:<name>/<path>?<query>"], else PluginNotFound.
func (f *fakeKBS) Plugin(_ context.Context, p resource.Plugin) ([]byte, error) {
	f.plugins.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	v, ok := f.data[p.CacheKey()]
	if !ok {
		return nil, &kbsclient.Error{Kind: kbsclient.PluginNotFound, Op: "plugin", Status: 404, KBSType: "PluginNotFound"}
	}
	return []byte(v), nil
}

func (f *fakeKBS) Resource(_ context.Context, p resource.Path) ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	v, ok := f.data[p.String()]
	if !ok {
		return nil, &kbsclient.Error{Kind: kbsclient.NotFound, Op: "resource", Status: 401, KBSType: "PluginInternalError"}
	}
	return []byte(v), nil
}

func newTestHandler(t *testing.T, kbs core.Fetcher) http.Handler {
	t.Helper()
	c, err := cache.New(cache.Config{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: kbs}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func serve(h http.Handler, remote, target string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.RemoteAddr = remote
	req.Host = "127.0.0.1:8006"
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestGuard(t *testing.T) {
	h := newTestHandler(t, &fakeKBS{data: map[string]string{"default/akv/coco_one": "a secret"}})
	tests := []struct {
		name, remote, host string
		hdr                []string
		want               int
	}{
		{name: "ipv4 loopback", remote: "127.0.0.1:5555", want: 200},
		{name: "other 127/8", remote: "127.1.2.3:5555", want: 200},
		{name: "ipv6 loopback", remote: "[::1]:5555", want: 200},
		{name: "pod network peer", remote: "10.244.0.7:5555", want: 403},
		{name: "public peer", remote: "203.0.113.9:5555", want: 403},
		{name: "ipv4-mapped non-loopback", remote: "[::ffff:10.0.0.1]:5555", want: 403},
		{name: "garbage remote", remote: "nonsense", want: 403},
		{name: "origin header", remote: "127.0.0.1:5555", hdr: []string{"Origin", "null"}, want: 403},
		{name: "cross-site fetch", remote: "127.0.0.1:5555", hdr: []string{"Sec-Fetch-Site", "cross-site"}, want: 403},
		{name: "same-site fetch", remote: "127.0.0.1:5555", hdr: []string{"Sec-Fetch-Site", "same-site"}, want: 403},
		{name: "typed-in URL", remote: "127.0.0.1:5555", hdr: []string{"Sec-Fetch-Site", "none"}, want: 200},
		{name: "rebound host", remote: "127.0.0.1:5555", host: "evil.example:8006", want: 403},
		{name: "localhost host", remote: "127.0.0.1:5555", host: "localhost:8006", want: 200},
		{name: "ipv6 host", remote: "[::1]:5555", host: "[::1]:8006", want: 200},
		{name: "127/8 host", remote: "127.0.0.1:5555", host: "127.0.0.2", want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := tt.hdr
			if tt.host != "" {
				hdr = append(hdr, "Host", tt.host)
			}
			rec := serve(h, tt.remote, "/cdh/resource/default/akv/coco_one", hdr...)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d", rec.Code, tt.want)
			}
			if tt.want == 200 && rec.Body.String() != "a secret" {
				t.Fatalf("body %q", rec.Body)
			}
			if tt.want == 403 && rec.Body.String() == "a secret" {
				t.Fatal("secret served to a refused peer")
			}
		})
	}
}

func TestProblemBodyCarriesKBSError(t *testing.T) {
	h := newTestHandler(t, &fakeKBS{err: &kbsclient.Error{Kind: kbsclient.Denied, Op: "resource", Status: 401,
		KBSType: "PolicyDeny", KBSDetail: "Access denied by policy"}})
	rec := serve(h, "127.0.0.1:1", "/cdh/resource/default/akv/coco_one")
	var p core.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 403 || p.KBSType != "PolicyDeny" || p.KBSDetail != "Access denied by policy" || p.Resource != "default/akv/coco_one" {
		t.Fatalf("%d %+v", rec.Code, p)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q", ct)
	}
}

func TestHeadAndHeaders(t *testing.T) {
	h := newTestHandler(t, &fakeKBS{data: map[string]string{"r/t/x": "0123456789"}})
	req := httptest.NewRequest(http.MethodHead, "/cdh/resource/r/t/x", nil)
	req.RemoteAddr, req.Host = "127.0.0.1:1", "localhost"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") != "10" {
		t.Fatalf("HEAD: %d len %d CL %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
	}
	rec = serve(h, "127.0.0.1:1", "/cdh/resource/r/t/x?ignored=1")
	if rec.Body.String() != "0123456789" || rec.Header().Get("X-Cache") != "HIT" || rec.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("GET: %q %v", rec.Body, rec.Header())
	}
}

func TestNoCache(t *testing.T) {
	for hdr, want := range map[string]bool{
		"no-cache": true, "No-Cache": true, "max-age=0": true, "private, no-cache": true,
		"no-store": false, "": false, "max-age=10": false,
	} {
		h := http.Header{}
		if hdr != "" {
			h.Set("Cache-Control", hdr)
		}
		if got := noCache(h); got != want {
			t.Errorf("noCache(%q) = %v, want %v", hdr, got, want)
		}
	}
	if !noCache(http.Header{"Pragma": {"no-cache"}}) {
		t.Error("Pragma: no-cache ignored")
	}
}

// switchKBS answers from data until err is set.
type switchKBS struct {
	mu   sync.Mutex
	data string
	err  error
}

func (s *switchKBS) Plugin(ctx context.Context, _ resource.Plugin) ([]byte, error) {
	return s.Resource(ctx, resource.Path{})
}

func (s *switchKBS) Resource(context.Context, resource.Path) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	return []byte(s.data), nil
}

func (s *switchKBS) set(err error) { s.mu.Lock(); s.err = err; s.mu.Unlock() }

func TestStaleIfErrorServing(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c, err := cache.New(cache.Config{TTL: time.Minute, StaleIfError: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	kbs := &switchKBS{data: "a secret"}
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: kbs}})
	if err != nil {
		t.Fatal(err)
	}
	const path = "/cdh/resource/default/akv/coco_one"
	if rec := serve(h, "127.0.0.1:1", path); rec.Code != 200 {
		t.Fatalf("warm: %d", rec.Code)
	}
	advance(2 * time.Minute)
	kbs.set(&kbsclient.Error{Kind: kbsclient.Unavailable, Op: "resource"})
	rec := serve(h, "127.0.0.1:1", path)
	if rec.Code != 200 || rec.Body.String() != "a secret" || rec.Header().Get("X-Cache") != "STALE" || rec.Header().Get("Warning") == "" || rec.Header().Get("Age") != "120" {
		t.Fatalf("KBS down: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	// A denial is authoritative: no stale copy afterwards.
	kbs.set(&kbsclient.Error{Kind: kbsclient.Denied, Op: "resource", KBSType: "PolicyDeny"})
	if rec := serve(h, "127.0.0.1:1", path); rec.Code != 403 {
		t.Fatalf("deny: %d", rec.Code)
	}
	kbs.set(&kbsclient.Error{Kind: kbsclient.Unavailable, Op: "resource"})
	if rec := serve(h, "127.0.0.1:1", path); rec.Code != 503 {
		t.Fatalf("KBS down after a deny: %d %q (must not serve the stale copy)", rec.Code, rec.Body)
	}
}

func TestRequireHeader(t *testing.T) {
	c, _ := cache.New(cache.Config{TTL: time.Minute})
	h, err := NewHandler(Config{RequireHeader: "X-Cdh-Request", Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{data: map[string]string{"r/t/x": "v"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/cdh/resource/r/t/x", "/healthz"} {
		if rec := serve(h, "127.0.0.1:1", path); rec.Code != 403 || !strings.Contains(rec.Body.String(), "X-Cdh-Request") {
			t.Fatalf("%s without the header: %d %s", path, rec.Code, rec.Body)
		}
		if rec := serve(h, "127.0.0.1:1", path, "X-CDH-Request", "1"); rec.Code != 200 {
			t.Fatalf("%s with the header: %d", path, rec.Code)
		}
	}
}
