package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// discardWriter is a minimal ResponseWriter so the benchmark measures the
// handler, not httptest's recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

func BenchmarkHandlerHit(b *testing.B) {
	c, _ := cache.New(cache.Config{TTL: time.Hour})
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{data: map[string]string{"default/akv/coco_one": "a secret"}}}})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/cdh/resource/default/akv/coco_one", nil)
	req.RemoteAddr, req.Host = "127.0.0.1:5555", "127.0.0.1:8006"
	w := &discardWriter{h: http.Header{}}
	h.ServeHTTP(w, req) // warm the cache
	if w.h.Get("X-Cache") != "MISS" {
		b.Fatalf("warm-up request not served: %v", w.h)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

func BenchmarkCachedResourcesHit(b *testing.B) {
	c, _ := cache.New(cache.Config{TTL: time.Hour})
	r := &core.Secrets{Cache: c, KBS: &fakeKBS{data: map[string]string{"default/akv/coco_one": "a secret"}}}
	p, _ := resource.ParseEscaped("default/akv/coco_one")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		v, _, err := r.Resource(ctx, p, false)
		if err != nil {
			b.Fatal(err)
		}
		v.Release()
	}
}
