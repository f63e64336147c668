package core

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// hangingKBS failed once (LastFailure) and now never answers.
type hangingKBS struct{ failedAt time.Time }

func (h *hangingKBS) Resource(ctx context.Context, _ resource.Path) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (h *hangingKBS) Plugin(ctx context.Context, _ resource.Plugin) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (h *hangingKBS) LastFailure(since time.Time) error {
	if h.failedAt.Before(since) {
		return nil
	}
	return &kbsclient.Error{Kind: kbsclient.Unavailable, Op: "resource", Status: 502, KBSType: "Gateway", KBSDetail: "upstream down"}
}

// A caller whose budget ends while it waits on a shared fetch gets 504 with
// the KBS failure of its budget attached, deterministically.
func TestBudgetEndWhileWaitingOnFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := cache.New(cache.Config{TTL: time.Minute, FetchTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		kbs := &hangingKBS{}
		res := &Secrets{Cache: c, KBS: kbs}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		kbs.failedAt = time.Now().Add(500 * time.Millisecond) // during the budget
		_, _, err = res.Resource(ctx, resource.Path{Repo: "a", Type: "b", Tag: "c"}, false)
		p := Classify(err)
		if p.Status != http.StatusGatewayTimeout || p.KBSType != "Gateway" || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v → %+v, want 504 with the KBS cause", err, p)
		}
		// A failure from before this request is not its cause.
		kbs.failedAt = time.Now().Add(-time.Hour)
		ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
		defer cancel2()
		_, _, err = res.Resource(ctx2, resource.Path{Repo: "a", Type: "b", Tag: "d"}, false)
		if p := Classify(err); p.Status != http.StatusGatewayTimeout || p.KBSType != "" {
			t.Fatalf("%v → %+v, want a bare 504", err, p)
		}
	})
}
