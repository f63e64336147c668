// Package cache is a byte-bounded TTL LRU for plaintext resources with
// per-key request coalescing. It knows nothing about KBSes: callers pass a
// fetch function. Evicted and replaced plaintext is zeroed once no reader
// holds it (best effort in Go: copies made by the runtime are out of reach).
package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Defaults for zero Config fields (design.md, "Behaviour that users expect").
const (
	DefaultMaxBytes      = 64 << 20
	DefaultMaxEntryBytes = 1 << 20
	DefaultFetchTimeout  = 30 * time.Second
)

// Config configures a Cache.
type Config struct {
	// TTL of an entry. Zero disables caching (requests are still coalesced).
	TTL time.Duration
	// MaxBytes bounds the plaintext held; zero → DefaultMaxBytes.
	MaxBytes int64
	// MaxEntryBytes: larger values are served but not cached; zero → DefaultMaxEntryBytes.
	MaxEntryBytes int64
	// FetchTimeout is the budget of one shared fetch, independent of the
	// caller that started it; zero → DefaultFetchTimeout.
	FetchTimeout time.Duration
	// StaleIfError keeps expired entries this much longer, for Stale to
	// serve when a refetch fails; zero keeps nothing past its TTL.
	StaleIfError time.Duration
	// Now is the clock; nil → time.Now.
	Now func() time.Time
}

// Meta describes how a value was obtained.
type Meta struct {
	Hit   bool          // served from the cache
	Stale bool          // served past its TTL because a refetch failed
	Age   time.Duration // age of a cached value
}

// Stats are cumulative counters and current gauges.
type Stats struct {
	Hits, Misses, Evictions, Fetches, FetchErrors uint64
	Entries                                       int
	Bytes                                         int64
}

// Fetch obtains a value on a miss. The returned slice is owned by the cache.
type Fetch func(ctx context.Context) ([]byte, error)

// Cache is safe for concurrent use.
type Cache struct {
	cfg Config

	// base parents every fetch: fetches outlive the caller that started
	// them (others may wait on them) but not the cache. Close cancels it
	// and waits for them.
	base    context.Context
	cancel  context.CancelFunc
	running sync.WaitGroup

	mu      sync.Mutex
	lru     *simplelru.LRU[string, *entry]
	bytes   int64
	flights map[string]*flight

	hits, misses, evictions, fetches, fetchErrs atomic.Uint64
}

type entry struct {
	val     *Value
	stored  time.Time
	expires time.Time
}

// flight is one in-progress fetch. waiters counts the callers that will take
// a reference when it finishes; it only changes under Cache.mu, and so does
// finished, so the reference count handed out is exact.
type flight struct {
	done     chan struct{}
	waiters  int32
	finished bool
	val      *Value
	err      error

	// next is the follow-up fetch for callers that must not join this
	// one, with what it will run with.
	next  *flight
	fetch Fetch
}

// New returns a Cache.
func New(cfg Config) (*Cache, error) {
	if cfg.TTL < 0 || cfg.MaxBytes < 0 || cfg.MaxEntryBytes < 0 || cfg.FetchTimeout < 0 || cfg.StaleIfError < 0 {
		return nil, errors.New("cache: negative TTL, size or timeout")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxEntryBytes == 0 {
		cfg.MaxEntryBytes = DefaultMaxEntryBytes
	}
	cfg.MaxEntryBytes = min(cfg.MaxEntryBytes, cfg.MaxBytes)
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{cfg: cfg, flights: map[string]*flight{}}
	c.base, c.cancel = context.WithCancel(context.Background())
	// The count bound is unused: bytes are the bound, enforced in store.
	lru, err := simplelru.NewLRU(math.MaxInt32, c.onEvict)
	if err != nil {
		return nil, err
	}
	c.lru = lru
	return c, nil
}

// onEvict runs under c.mu for every removal (eviction, expiry, replacement, purge).
func (c *Cache) onEvict(_ string, e *entry) {
	c.bytes -= int64(e.val.Len())
	c.evictions.Add(1)
	e.val.Release()
}

// Lookup returns a fresh cached value without fetching: the allocation-free
// hit path. The caller must Release the value.
func (c *Cache) Lookup(key string) (*Value, Meta, bool) {
	c.mu.Lock()
	v, meta, ok := c.lookupLocked(key)
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	}
	return v, meta, ok
}

// Get returns the value for key, from the cache when fresh, else from one
// fetch shared by all concurrent callers for key. refresh skips the cached
// copy (a request's Cache-Control: no-cache). The caller must Release the
// value. A caller whose ctx ends stops waiting; the fetch goes on for the
// others on its own budget.
func (c *Cache) Get(ctx context.Context, key string, refresh bool, fetch Fetch) (*Value, Meta, error) {
	c.mu.Lock()
	if !refresh {
		if v, meta, ok := c.lookupLocked(key); ok {
			c.mu.Unlock()
			c.hits.Add(1)
			return v, meta, nil
		}
	}
	c.misses.Add(1)
	if err := c.base.Err(); err != nil {
		c.mu.Unlock()
		return nil, Meta{}, fmt.Errorf("cache closed: %w", err)
	}
	f := c.flights[key]
	switch {
	case f == nil:
		f = &flight{done: make(chan struct{})}
		c.flights[key] = f
		c.start(key, f, fetch)
	case refresh || c.cfg.TTL == 0:
		// The running fetch may have read the KBS before this caller
		// arrived; one that must see the KBS as it is now waits for the
		// follow-up, which starts when the running one ends and is shared
		// by every such caller meanwhile.
		if f.next == nil {
			f.next = &flight{done: make(chan struct{}), fetch: fetch}
		}
		f = f.next
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		if !f.finished {
			f.waiters--
			c.mu.Unlock()
			return nil, Meta{}, ctx.Err()
		}
		c.mu.Unlock()
		// Finished meanwhile: our reference was counted; give it back.
		if f.err == nil {
			f.val.Release()
		}
		return nil, Meta{}, ctx.Err()
	}
	if f.err != nil {
		return nil, Meta{}, f.err
	}
	return f.val, Meta{}, nil
}

func (c *Cache) lookupLocked(key string) (*Value, Meta, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		return nil, Meta{}, false
	}
	now := c.cfg.Now()
	if !now.Before(e.expires) {
		if !now.Before(e.expires.Add(c.cfg.StaleIfError)) {
			c.lru.Remove(key)
		}
		return nil, Meta{}, false
	}
	if !e.val.tryAcquire() {
		return nil, Meta{}, false
	}
	return e.val, Meta{Hit: true, Age: now.Sub(e.stored)}, true
}

// Stale returns the last stored value for key if it is younger than its TTL
// plus StaleIfError: what to serve when a refetch failed. The caller must
// Release the value.
func (c *Cache) Stale(key string) (*Value, Meta, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(key)
	if !ok {
		return nil, Meta{}, false
	}
	now := c.cfg.Now()
	if !now.Before(e.expires.Add(c.cfg.StaleIfError)) || !e.val.tryAcquire() {
		return nil, Meta{}, false
	}
	return e.val, Meta{Hit: true, Stale: !now.Before(e.expires), Age: now.Sub(e.stored)}, true
}

// Remove drops key (e.g. after the KBS denied it or reported it missing, so
// no stale copy outlives that answer).
func (c *Cache) Remove(key string) {
	c.mu.Lock()
	c.lru.Remove(key)
	c.mu.Unlock()
}

// start runs fetch for f in a goroutine the cache owns. Called under c.mu.
func (c *Cache) start(key string, f *flight, fetch Fetch) {
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		c.run(key, f, fetch)
	}()
}

func (c *Cache) run(key string, f *flight, fetch Fetch) {
	ctx, cancel := context.WithTimeout(c.base, c.cfg.FetchTimeout)
	c.fetches.Add(1)
	b, err := fetch(ctx)
	cancel()
	if err != nil {
		c.fetchErrs.Add(1)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.flights, key)
	if n := f.next; n != nil {
		if n.waiters > 0 {
			c.flights[key] = n
			c.start(key, n, n.fetch)
		} else { // every caller for it left before it started
			n.finished, n.err = true, context.Canceled
			close(n.done)
		}
	}
	f.finished = true
	f.err = err
	if err == nil {
		cacheable := c.cfg.TTL > 0 && int64(len(b)) <= c.cfg.MaxEntryBytes
		refs := f.waiters
		if cacheable {
			refs++
		}
		if refs == 0 { // nobody waits and nothing stores it
			clear(b)
		} else {
			f.val = newValue(b, refs)
			if cacheable {
				c.storeLocked(key, f.val)
			}
		}
	}
	close(f.done)
}

func (c *Cache) storeLocked(key string, v *Value) {
	// simplelru's Add does not call onEvict on replacement; remove first so
	// the old plaintext is released (and zeroed) like any eviction.
	c.lru.Remove(key)
	now := c.cfg.Now()
	c.lru.Add(key, &entry{val: v, stored: now, expires: now.Add(c.cfg.TTL)})
	c.bytes += int64(v.Len())
	for c.bytes > c.cfg.MaxBytes {
		c.lru.RemoveOldest()
	}
}

// Sweep removes entries past TTL (plus StaleIfError), zeroing their
// plaintext once unreferenced.
func (c *Cache) Sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	for _, k := range c.lru.Keys() {
		if e, ok := c.lru.Peek(k); ok && !now.Before(e.expires.Add(c.cfg.StaleIfError)) {
			c.lru.Remove(k)
		}
	}
}

// Run sweeps expired entries every interval until ctx ends, then purges
// everything (so plaintext does not outlive the server).
func (c *Cache) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.Purge()
			return nil
		case <-t.C:
			c.Sweep()
		}
	}
}

// Close cancels the fetches still running, waits for them to end, and
// purges every entry. Get after Close fails with context.Canceled.
func (c *Cache) Close() {
	c.cancel()
	c.running.Wait()
	c.Purge()
}

// Purge removes every entry.
func (c *Cache) Purge() {
	c.mu.Lock()
	c.lru.Purge()
	c.mu.Unlock()
}

// Stats returns counters and gauges.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	n, b := c.lru.Len(), c.bytes
	c.mu.Unlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
		Fetches: c.fetches.Load(), FetchErrors: c.fetchErrs.Load(), Entries: n, Bytes: b,
	}
}
