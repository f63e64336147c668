package credentials

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// flakyFetcher fails each URI a set number of times, then answers.
type flakyFetcher struct {
	mu    sync.Mutex
	fails map[string]int
	calls map[string]int
}

func (f *flakyFetcher) Fetch(_ context.Context, uri string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[uri]++
	if f.fails[uri] > 0 {
		f.fails[uri]--
		return nil, errors.New("KBS down")
	}
	return []byte("value of " + uri), nil
}

func TestWriterRetriesUntilAllWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		f := &flakyFetcher{fails: map[string]int{"kbs:///a/b/late": 3}, calls: map[string]int{}}
		w := New(f, []Credential{
			{ResourceURI: "kbs:///a/b/now", Path: filepath.Join(dir, "now")},
			{ResourceURI: "kbs:///a/b/late", Path: filepath.Join(dir, "sub", "late")},
		}, nil)
		if w.Done() {
			t.Fatal("done before running")
		}
		start := time.Now()
		if err := w.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		// 3 failures: waits of 1 s, 2 s and 4 s.
		if d := time.Since(start); d != 7*time.Second || !w.Done() {
			t.Fatalf("took %v (want 7s of backoff), done %v", d, w.Done())
		}
		for name, uri := range map[string]string{"now": "kbs:///a/b/now", "sub/late": "kbs:///a/b/late"} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || string(b) != "value of "+uri {
				t.Fatalf("%s: %q %v", name, b, err)
			}
		}
		if f.calls["kbs:///a/b/now"] != 1 {
			t.Fatalf("a written credential was fetched again: %d", f.calls["kbs:///a/b/now"])
		}
	})
}

func TestWriterStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &flakyFetcher{fails: map[string]int{"kbs:///a/b/c": 1 << 30}, calls: map[string]int{}}
		w := New(f, []Credential{{ResourceURI: "kbs:///a/b/c", Path: filepath.Join(t.TempDir(), "c")}}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := w.Run(ctx); err != nil || w.Done() {
			t.Fatalf("%v done=%v", err, w.Done())
		}
	})
}

func TestWriterWithNothingIsDone(t *testing.T) {
	if w := New(nil, nil, nil); !w.Done() {
		t.Fatal("no credentials: not done")
	}
}
