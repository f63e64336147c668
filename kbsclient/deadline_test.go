package kbsclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// handlerTransport serves requests with h in memory: no sockets, so the
// client can run inside a synctest bubble.
type handlerTransport struct {
	h    http.Handler
	hang func(*http.Request) bool // when true, block until the request's ctx ends
}

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.hang != nil && t.hang(r) {
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

func newBubbleClient(t *testing.T, kcfg kbs.Config, ccfg Config, hang func(*http.Request) bool) (*kbs.Server, *Client) {
	t.Helper()
	srv, _ := newTestKBS(t, kcfg)
	ccfg.URL = "http://kbs.invalid"
	ccfg.Attester = sample.Attester{}
	ccfg.HTTPClient = &http.Client{Transport: handlerTransport{h: srv, hang: hang}}
	c, err := New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return srv, c
}

// When the budget ends, the answer is the deadline (504 at the front ends)
// with the last KBS failure attached, whether the budget ran out during a
// backoff or during a request.
func TestBudgetEndKeepsLastKBSCause(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang func(*http.Request) bool
	}{
		{"ends during backoff", nil},
		{"ends during a request", func() func(*http.Request) bool {
			n := 0
			return func(r *http.Request) bool {
				if r.Method != http.MethodGet {
					return false
				}
				n++
				return n > 1 // the first GET fails fast (500), the retry hangs
			}
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv, c := newBubbleClient(t, kbs.Config{}, Config{MaxRetries: 100, Rand: func() float64 { return 0.999 }}, tc.hang)
				srv.SetFaults(kbs.Faults{Status: 500, Only: []kbs.Endpoint{kbs.EndpointResource}})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				start := time.Now()
				_, err := c.Resource(ctx, coco)
				var kerr *Error
				if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &kerr) || kerr.Kind != Unavailable || kerr.Status != 500 {
					t.Fatalf("err = %v, want the deadline with the last KBS failure (500) attached", err)
				}
				if d := time.Since(start); d != 5*time.Second {
					t.Fatalf("returned after %v, want exactly the 5 s budget", d)
				}
			})
		})
	}
}

// A budget that ends before any KBS answer has no cause to attach.
func TestBudgetEndWithoutKBSAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, c := newBubbleClient(t, kbs.Config{}, Config{}, func(*http.Request) bool { return true })
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Resource(ctx, coco)
		var kerr *Error
		if !errors.Is(err, context.DeadlineExceeded) || errors.As(err, &kerr) {
			t.Fatalf("err = %v, want a bare deadline", err)
		}
	})
}

// Close waits for a handshake in flight, and nothing starts after it.
func TestCloseOwnsHandshakes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, c := newBubbleClient(t, kbs.Config{}, Config{}, func(*http.Request) bool { return true })
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := c.Resource(ctx, coco); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v", err)
		}
		// The handshake still runs on the client's own budget; Close ends it.
		c.Close()
		if err := c.Attest(context.Background()); !errors.Is(err, errClosed) {
			t.Fatalf("Attest after Close: %v", err)
		}
	})
}

// The next handshake's key is made ahead of time: ready before the first
// request, and again right after each handshake takes one; each handshake
// still uses a key of its own.
func TestKeysMadeAheadOfTime(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyEC256, KeyRSA256} {
		t.Run(string(alg), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, c := newBubbleClient(t, kbs.Config{}, Config{KeyAlgorithm: alg}, nil)
				ready := func() bool {
					c.mu.Lock()
					defer c.mu.Unlock()
					if c.nextKey == nil {
						return false
					}
					select {
					case <-c.nextKey.done:
						return true
					default:
						return false
					}
				}
				synctest.Wait()
				if !ready() {
					t.Fatal("no key made ahead of the first handshake")
				}
				if _, err := c.Resource(context.Background(), coco); err != nil {
					t.Fatal(err)
				}
				first := c.cur
				synctest.Wait()
				if ready() {
					t.Fatal("a key was made right after the handshake, beside the requests that follow it")
				}
				time.Sleep(first.expires.Sub(first.obtained)/2 + time.Second) // past half the token's life
				if _, err := c.Resource(context.Background(), coco); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				if !ready() {
					t.Fatal("no key made ahead of the refresh")
				}
				if _, err := c.Resource(context.Background(), coco); err != nil {
					t.Fatal(err)
				}
				c.mu.Lock()
				c.cur = nil // force a second handshake
				c.mu.Unlock()
				if _, err := c.Resource(context.Background(), coco); err != nil {
					t.Fatal(err)
				}
				if c.cur.key == first.key {
					t.Fatal("two handshakes shared a TEE key")
				}
			})
		})
	}
	synctest.Test(t, func(t *testing.T) {
		_, c := newBubbleClient(t, kbs.Config{}, Config{DisableKeyPregeneration: true}, nil)
		synctest.Wait()
		if _, err := c.Resource(context.Background(), coco); err != nil {
			t.Fatal(err)
		}
		if c.nextKey != nil {
			t.Fatal("a key was made ahead of time although disabled")
		}
	})
}
