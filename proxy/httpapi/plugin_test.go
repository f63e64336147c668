package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
)

func newPluginHandler(t *testing.T, kbs core.Fetcher, cachePlugins ...string) http.Handler {
	t.Helper()
	c, err := cache.New(cache.Config{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cp := map[string]bool{}
	for _, n := range cachePlugins {
		cp[n] = true
	}
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: kbs, CachePlugins: cp}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPluginRoute(t *testing.T) {
	kbs := &fakeKBS{data: map[string]string{
		"plugin:sample/anything":                     "sample plugin response",
		"plugin:nebula-ca/credential?name=pod&ip=10": "a per-call credential",
	}}
	h := newPluginHandler(t, kbs)
	for _, tc := range []struct {
		target   string
		status   int
		body     string
		probType string
	}{
		{"/cdh/plugin/sample/anything", 200, "sample plugin response", ""},
		{"/cdh/plugin/nebula-ca/credential?name=pod&ip=10", 200, "a per-call credential", ""},
		{"/cdh/plugin/nope/x", 404, "", "urn:cdh-proxy:kbs-plugin-not-found"},
		{"/cdh/plugin/sample/..", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/sample/a%2Fb", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/sample/a//b", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/auth/x", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/resource/default/akv/coco_one", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/.hidden/x", 400, "", "urn:cdh-proxy:bad-path"},
		{"/cdh/plugin/sample/x?a=%zz", 400, "", "urn:cdh-proxy:bad-path"},
	} {
		t.Run(tc.target, func(t *testing.T) {
			rec := serve(h, "127.0.0.1:5555", tc.target)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status == 200 {
				if rec.Body.String() != tc.body || rec.Header().Get("X-Cache") != "MISS" {
					t.Fatalf("body %q X-Cache %q", rec.Body, rec.Header().Get("X-Cache"))
				}
				return
			}
			var p core.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Type != tc.probType {
				t.Fatalf("problem %+v (%v), want type %s", p, err, tc.probType)
			}
		})
	}
}

func TestPluginNotCachedUnlessAsked(t *testing.T) {
	data := map[string]string{"plugin:sample/x": "v", "plugin:cached/x": "w"}
	kbs := &fakeKBS{data: data}
	h := newPluginHandler(t, kbs, "cached")
	for range 3 {
		if rec := serve(h, "127.0.0.1:5555", "/cdh/plugin/sample/x"); rec.Code != 200 || rec.Header().Get("X-Cache") != "MISS" {
			t.Fatalf("uncached plugin: %d %q", rec.Code, rec.Header().Get("X-Cache"))
		}
	}
	if n := kbs.plugins.Load(); n != 3 {
		t.Fatalf("uncached plugin: %d KBS calls for 3 requests, want 3", n)
	}
	for i := range 3 {
		rec := serve(h, "127.0.0.1:5555", "/cdh/plugin/cached/x")
		if want := map[bool]string{true: "MISS", false: "HIT"}[i == 0]; rec.Code != 200 || rec.Header().Get("X-Cache") != want {
			t.Fatalf("cached plugin request %d: %d X-Cache %q, want %s", i, rec.Code, rec.Header().Get("X-Cache"), want)
		}
	}
	if n := kbs.plugins.Load(); n != 4 {
		t.Fatalf("cached plugin: %d KBS calls in all, want 4 (3 uncached + 1)", n)
	}
	// A plugin answer never lands under a resource key, nor the reverse.
	if rec := serve(h, "127.0.0.1:5555", "/cdh/resource/cached/x/y"); rec.Code != 404 {
		t.Fatalf("resource under a plugin's name: %d", rec.Code)
	}
}

func TestPluginOnlyGET(t *testing.T) {
	h := newPluginHandler(t, &fakeKBS{data: map[string]string{"plugin:sample/x": "v"}})
	for _, m := range []string{http.MethodHead, http.MethodPost, http.MethodDelete} {
		req := httptest.NewRequest(m, "/cdh/plugin/sample/x", nil)
		req.RemoteAddr, req.Host = "127.0.0.1:5555", "127.0.0.1:8006"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET" {
			t.Fatalf("%s: %d Allow=%q", m, rec.Code, rec.Header().Get("Allow"))
		}
	}
}

func TestPluginFeatureOff(t *testing.T) {
	c, _ := cache.New(cache.Config{TTL: time.Minute})
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{}}, Features: core.Features{Attestation: true},
		Evidence: func(context.Context, []byte) (json.RawMessage, error) { return nil, nil },
		Token:    func(context.Context) (string, []byte, error) { return "", nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if rec := serve(h, "127.0.0.1:5555", "/cdh/plugin/sample/x"); rec.Code != http.StatusNotFound {
		t.Fatalf("plugin route with resource feature off: %d", rec.Code)
	}
}
