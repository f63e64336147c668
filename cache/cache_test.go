package cache

import (
	"github.com/cdh-proxy/cdh-proxy/internal/testutil"

	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func newCache(t *testing.T, cfg Config) *Cache {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func static(b string, calls *atomic.Int32) Fetch {
	return func(context.Context) ([]byte, error) {
		calls.Add(1)
		return []byte(b), nil
	}
}

func get(t *testing.T, c *Cache, key string, refresh bool, f Fetch) (string, Meta) {
	t.Helper()
	v, m, err := c.Get(context.Background(), key, refresh, f)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer v.Release()
	return string(v.Bytes()), m
}

func TestHitMissAndTTL(t *testing.T) {
	clk := testutil.NewClock()
	c := newCache(t, Config{TTL: time.Minute, Now: clk.Now})
	var calls atomic.Int32
	if got, m := get(t, c, "k", false, static("v1", &calls)); got != "v1" || m.Hit {
		t.Fatalf("first Get = %q hit=%v", got, m.Hit)
	}
	clk.Advance(30 * time.Second)
	if got, m := get(t, c, "k", false, static("v2", &calls)); got != "v1" || !m.Hit || m.Age != 30*time.Second {
		t.Fatalf("second Get = %q %+v, want cached v1 aged 30s", got, m)
	}
	clk.Advance(30 * time.Second) // exactly at expiry: stale
	if got, _ := get(t, c, "k", false, static("v2", &calls)); got != "v2" {
		t.Fatalf("after TTL = %q, want v2", got)
	}
	if calls.Load() != 2 {
		t.Fatalf("fetches = %d, want 2", calls.Load())
	}
	s := c.Stats()
	if s.Hits != 1 || s.Misses != 2 || s.Entries != 1 || s.Bytes != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestRefreshBypassesCache(t *testing.T) {
	c := newCache(t, Config{TTL: time.Hour})
	var calls atomic.Int32
	get(t, c, "k", false, static("old", &calls))
	if got, m := get(t, c, "k", true, static("new", &calls)); got != "new" || m.Hit {
		t.Fatalf("refresh Get = %q hit=%v", got, m.Hit)
	}
	if got, _ := get(t, c, "k", false, static("x", &calls)); got != "new" {
		t.Fatalf("after refresh cached = %q, want new", got)
	}
}

func TestTTLZeroDisablesCaching(t *testing.T) {
	c := newCache(t, Config{})
	var calls atomic.Int32
	for i := range 3 {
		if got, m := get(t, c, "k", false, static(fmt.Sprint(i), &calls)); got != fmt.Sprint(i) || m.Hit {
			t.Fatalf("Get %d = %q hit=%v", i, got, m.Hit)
		}
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || calls.Load() != 3 {
		t.Fatalf("stats %+v calls %d", s, calls.Load())
	}
}

func TestMaxEntryServedNotCached(t *testing.T) {
	c := newCache(t, Config{TTL: time.Hour, MaxEntryBytes: 4})
	var calls atomic.Int32
	big := "0123456789"
	for range 2 {
		if got, _ := get(t, c, "big", false, static(big, &calls)); got != big {
			t.Fatalf("got %q", got)
		}
	}
	if calls.Load() != 2 || c.Stats().Entries != 0 {
		t.Fatalf("oversize entry cached: calls %d stats %+v", calls.Load(), c.Stats())
	}
}

func TestByteBoundEvictsLRUAndZeroes(t *testing.T) {
	c := newCache(t, Config{TTL: time.Hour, MaxBytes: 10})
	var bufs [3][]byte
	for i := range bufs {
		bufs[i] = bytes.Repeat([]byte{byte('a' + i)}, 4)
		b := bufs[i]
		v, _, err := c.Get(context.Background(), fmt.Sprint(i), false, func(context.Context) ([]byte, error) { return b, nil })
		if err != nil {
			t.Fatal(err)
		}
		v.Release()
	}
	s := c.Stats()
	if s.Entries != 2 || s.Bytes != 8 || s.Evictions != 1 {
		t.Fatalf("stats = %+v, want 2 entries, 8 bytes, 1 eviction", s)
	}
	if !bytes.Equal(bufs[0], make([]byte, 4)) {
		t.Fatalf("evicted plaintext not zeroed: %q", bufs[0])
	}
	if !bytes.Equal(bufs[2], []byte("cccc")) {
		t.Fatalf("live entry damaged: %q", bufs[2])
	}
}

func TestEvictionNeverZeroesHeldBuffer(t *testing.T) {
	c := newCache(t, Config{TTL: time.Hour})
	var calls atomic.Int32
	held, _, err := c.Get(context.Background(), "k", false, static("secret-1", &calls))
	if err != nil {
		t.Fatal(err)
	}
	// Replacement (refresh) and purge both drop the cache's reference.
	get(t, c, "k", true, static("secret-2", &calls))
	c.Purge()
	if got := string(held.Bytes()); got != "secret-1" {
		t.Fatalf("held buffer changed to %q while referenced", got)
	}
	b := held.Bytes()
	held.Release()
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Fatalf("released buffer not zeroed: %q", b)
	}
}

func TestCoalescing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCache(t, Config{TTL: time.Hour})
		var calls atomic.Int32
		release := make(chan struct{})
		fetch := func(context.Context) ([]byte, error) {
			calls.Add(1)
			<-release
			return []byte("shared"), nil
		}
		const n = 1000
		errs := make(chan error, n)
		var started sync.WaitGroup
		started.Add(n)
		for range n {
			go func() {
				started.Done()
				v, _, err := c.Get(context.Background(), "k", false, fetch)
				if err == nil {
					if string(v.Bytes()) != "shared" {
						err = fmt.Errorf("got %q", v.Bytes())
					}
					v.Release()
				}
				errs <- err
			}()
		}
		started.Wait()
		// Every goroutine joined the flight before it may finish.
		waitFor(t, c, func() bool { f := c.flights["k"]; return f != nil && f.waiters == n })
		close(release)
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if calls.Load() != 1 {
			t.Fatalf("fetches = %d, want 1", calls.Load())
		}
		// All readers released: only the cache's reference remains.
		e, _ := c.lru.Peek("k")
		if r := e.val.refs.Load(); r != 1 {
			t.Fatalf("refs = %d, want 1", r)
		}
	})
}

func TestWaiterLeavesOnOwnContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCache(t, Config{TTL: time.Hour})
		release := make(chan struct{})
		fetchCtxErr := make(chan error, 1)
		fetch := func(ctx context.Context) ([]byte, error) {
			<-release
			fetchCtxErr <- ctx.Err()
			return []byte("v"), nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, _, err := c.Get(ctx, "k", false, fetch)
			done <- err
		}()
		synctest.Wait() // the caller is waiting on the fetch
		if c.Stats().Misses != 1 {
			t.Fatalf("misses %d", c.Stats().Misses)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Get after cancel = %v, want Canceled", err)
		}
		close(release)
		// The fetch ran on its own budget, not the cancelled caller's.
		if err := <-fetchCtxErr; err != nil {
			t.Fatalf("fetch ctx = %v, want alive", err)
		}
		var calls atomic.Int32
		synctest.Wait() // the abandoned fetch has stored its value
		if got, m := get(t, c, "k", false, static("x", &calls)); got != "v" || !m.Hit {
			t.Fatalf("later Get = %q hit=%v; the abandoned fetch should have filled the cache", got, m.Hit)
		}
		e, _ := c.lru.Peek("k")
		if r := e.val.refs.Load(); r != 1 {
			t.Fatalf("refs = %d, want 1 (the leaver's reference must not leak)", r)
		}
	})
}

func TestFetchErrorNotCached(t *testing.T) {
	c := newCache(t, Config{TTL: time.Hour})
	boom := errors.New("boom")
	_, _, err := c.Get(context.Background(), "k", false, func(context.Context) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	var calls atomic.Int32
	if got, m := get(t, c, "k", false, static("ok", &calls)); got != "ok" || m.Hit {
		t.Fatalf("after error got %q hit=%v", got, m.Hit)
	}
}

func TestSweepZeroesExpired(t *testing.T) {
	clk := testutil.NewClock()
	c := newCache(t, Config{TTL: time.Second, Now: clk.Now})
	buf := []byte("plaintext")
	v, _, err := c.Get(context.Background(), "k", false, func(context.Context) ([]byte, error) { return buf, nil })
	if err != nil {
		t.Fatal(err)
	}
	v.Release()
	clk.Advance(2 * time.Second)
	c.Sweep()
	if c.Stats().Entries != 0 || !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatalf("expired entry not swept and zeroed: %+v %q", c.Stats(), buf)
	}
}

func TestValueRedacted(t *testing.T) {
	v := newValue([]byte("secret"), 1)
	if s := fmt.Sprintf("%v %s %#v %+v", v, v, v, v); bytes.Contains([]byte(s), []byte("secret")) {
		t.Fatalf("formatted value leaks: %s", s)
	}
}

func BenchmarkHit(b *testing.B) {
	c, _ := New(Config{TTL: time.Hour})
	fetch := func(context.Context) ([]byte, error) { return []byte("a secret"), nil }
	ctx := context.Background()
	v, _, _ := c.Get(ctx, "default/akv/coco_one", false, fetch)
	v.Release()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			v, _, err := c.Get(ctx, "default/akv/coco_one", false, fetch)
			if err != nil {
				b.Fatal(err)
			}
			v.Release()
		}
	})
}

func TestStaleIfError(t *testing.T) {
	clk := testutil.NewClock()
	c := newCache(t, Config{TTL: time.Minute, StaleIfError: 10 * time.Minute, Now: clk.Now})
	var calls atomic.Int32
	get(t, c, "k", false, static("v1", &calls))
	clk.Advance(2 * time.Minute) // expired, inside the stale window
	if _, _, ok := c.Lookup("k"); ok {
		t.Fatal("expired entry served as fresh")
	}
	v, m, ok := c.Stale("k")
	if !ok || string(v.Bytes()) != "v1" || !m.Stale || m.Age != 2*time.Minute {
		t.Fatalf("Stale = %v %+v %v", ok, m, v)
	}
	v.Release()
	// A successful refetch replaces it.
	if got, _ := get(t, c, "k", false, static("v2", &calls)); got != "v2" {
		t.Fatalf("refetch = %q", got)
	}
	clk.Advance(12 * time.Minute) // past TTL + stale window
	c.Sweep()
	if _, _, ok := c.Stale("k"); ok || c.Stats().Entries != 0 {
		t.Fatal("entry kept past the stale window")
	}
	get(t, c, "k", false, static("v3", &calls))
	c.Remove("k")
	if _, _, ok := c.Stale("k"); ok {
		t.Fatal("removed entry still served stale")
	}
}

// A caller that must not be served a cached copy (TTL 0, or Cache-Control:
// no-cache) never joins a fetch that began before it arrived: that fetch may
// have read the KBS before a rotation the caller already knows about. Such
// callers share one follow-up fetch instead (found as a TestRotation flake).
func TestFreshCallersDoNotJoinOlderFetch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		refresh bool
	}{{"ttl 0", 0, false}, {"no-cache", time.Hour, true}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { freshCallers(t, tc.ttl, tc.refresh) })
		})
	}
}

func freshCallers(t *testing.T, ttl time.Duration, refresh bool) {
	c := newCache(t, Config{TTL: ttl})
	var calls atomic.Int32
	value := atomic.Value{}
	value.Store("old")
	release := make(chan struct{})
	fetch := func(context.Context) ([]byte, error) {
		n := calls.Add(1)
		v := value.Load().(string) // the KBS is read here...
		if n == 1 {
			<-release // ...and answers late
		}
		return []byte(v), nil
	}
	first := make(chan string, 1)
	go func() { s, _ := get(t, c, "k", refresh, fetch); first <- s }()
	waitFlight(t, c, "k", 1)
	value.Store("new") // rotation, seen by callers arriving from now on
	const n = 20
	later := make(chan string, n)
	for range n {
		go func() { s, _ := get(t, c, "k", refresh, fetch); later <- s }()
	}
	waitNext(t, c, "k", n)
	close(release)
	if s := <-first; s != "old" {
		t.Fatalf("first caller got %q", s)
	}
	for range n {
		if s := <-later; s != "new" {
			t.Fatalf("a caller arriving after the rotation got %q", s)
		}
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("fetches = %d, want 2 (the follow-up is shared)", got)
	}
}

// waitFlight waits until key's current fetch has n waiters.
func waitFlight(t *testing.T, c *Cache, key string, n int32) {
	t.Helper()
	waitFor(t, c, func() bool { f := c.flights[key]; return f != nil && f.waiters == n })
}

// waitNext waits until n more callers wait on key, whichever fetch they
// joined.
func waitNext(t *testing.T, c *Cache, key string, n int32) {
	t.Helper()
	waitFor(t, c, func() bool {
		f := c.flights[key]
		if f == nil {
			return false
		}
		w := f.waiters - 1
		if f.next != nil {
			w += f.next.waiters
		}
		return w == n
	})
}

// waitFor checks cond under c.mu once every goroutine of the test's
// bubble is blocked: the state it describes must have been reached.
func waitFor(t *testing.T, c *Cache, cond func() bool) {
	t.Helper()
	synctest.Wait()
	c.mu.Lock()
	ok := cond()
	c.mu.Unlock()
	if !ok {
		t.Fatal("condition not reached once every goroutine was blocked")
	}
}

func TestCloseCancelsAndWaitsForFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(Config{TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		started, ended := make(chan struct{}), make(chan struct{})
		got := make(chan error, 1)
		go func() {
			_, _, err := c.Get(context.Background(), "k", false, func(ctx context.Context) ([]byte, error) {
				close(started)
				<-ctx.Done() // a fetch that only ends when cancelled
				close(ended)
				return nil, ctx.Err()
			})
			got <- err
		}()
		<-started
		c.Close()
		select {
		case <-ended:
		default:
			t.Fatal("Close returned while a fetch was still running")
		}
		if err := <-got; !errors.Is(err, context.Canceled) {
			t.Fatalf("waiter: %v, want the cancellation", err)
		}
		if _, _, err := c.Get(context.Background(), "k", false, func(context.Context) ([]byte, error) { return []byte("x"), nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get after Close: %v", err)
		}
	})
}
