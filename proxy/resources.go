package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Fetcher fetches resources and plugin answers from the KBS (kbsclient.Client).
type Fetcher interface {
	Resource(ctx context.Context, p resource.Path) ([]byte, error)
	Plugin(ctx context.Context, p resource.Plugin) ([]byte, error)
}

// Plugins serves calls to KBS plugins other than resource. Front ends find
// it on their Resources by type assertion: CachedResources and RemoteCDH
// have it.
type Plugins interface {
	Plugin(ctx context.Context, p resource.Plugin, refresh bool) (*cache.Value, cache.Meta, error)
}

// Resources serves resources through the cache, fetching misses.
type Resources interface {
	Resource(ctx context.Context, p resource.Path, refresh bool) (*cache.Value, cache.Meta, error)
}

// CachedResources joins a cache and a fetcher: the HTTP and ttrpc front ends
// share one of these, hence one cache and one token.
type CachedResources struct {
	Cache *cache.Cache
	KBS   Fetcher
	// CachePlugins names the plugins whose answers are cached like
	// resources. Others are fetched on every call: a plugin answer may be a
	// per-call credential.
	CachePlugins map[string]bool
}

// Resource implements Resources. When the fetch fails for a reason that
// says nothing about the secret itself (KBS down, slow, garbage), the last
// good copy is served if the cache still holds one (cache StaleIfError),
// marked Meta.Stale. A policy denial or a missing resource removes any
// stale copy: those answers are authoritative.
func (c *CachedResources) Resource(ctx context.Context, p resource.Path, refresh bool) (*cache.Value, cache.Meta, error) {
	return c.cached(ctx, p.String(), refresh, func(ctx context.Context) ([]byte, error) {
		return c.KBS.Resource(ctx, p)
	})
}

// Plugin implements Plugins: uncached unless the operator listed the plugin
// in CachePlugins, then exactly like a resource (TTL, coalescing,
// stale-if-error).
func (c *CachedResources) Plugin(ctx context.Context, p resource.Plugin, refresh bool) (*cache.Value, cache.Meta, error) {
	if !c.CachePlugins[p.Name] {
		b, err := c.KBS.Plugin(ctx, p)
		if err != nil {
			return nil, cache.Meta{}, err
		}
		return cache.NewValue(b), cache.Meta{}, nil
	}
	return c.cached(ctx, p.CacheKey(), refresh, func(ctx context.Context) ([]byte, error) {
		return c.KBS.Plugin(ctx, p)
	})
}

func (c *CachedResources) cached(ctx context.Context, key string, refresh bool, fetch func(context.Context) ([]byte, error)) (*cache.Value, cache.Meta, error) {
	start := time.Now()
	v, meta, err := c.Cache.Get(ctx, key, refresh, fetch)
	err = c.withCause(err, start)
	if err == nil {
		return v, meta, nil
	}
	switch kbsclient.KindOf(err) {
	case kbsclient.Denied, kbsclient.NotFound, kbsclient.PluginNotFound:
		c.Cache.Remove(key)
		return nil, meta, err
	}
	if sv, smeta, ok := c.Cache.Stale(key); ok {
		smeta.Stale = true
		return sv, smeta, nil
	}
	return nil, meta, err
}

// withCause attaches the KBS failure behind a budget that ran out while
// this caller waited on a shared fetch: the caller left on its own
// deadline, so the fetch's error never reached it.
func (c *CachedResources) withCause(err error, start time.Time) error {
	var derr *kbsclient.DeadlineError
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || errors.As(err, &derr) {
		return err
	}
	lf, ok := c.KBS.(interface{ LastFailure(since time.Time) error })
	if !ok {
		return err
	}
	if last := lf.LastFailure(start); last != nil {
		return &kbsclient.DeadlineError{Err: err, Last: last}
	}
	return err
}

// Lookup serves a fresh cached copy without a context, a fetch closure or a
// budget timer: the warm path. Found by type assertion (lookuper).
func (c *CachedResources) Lookup(p resource.Path) (*cache.Value, cache.Meta, bool) {
	return c.Cache.Lookup(p.String())
}

// lookuper is the optional fast path of a Resources.
type lookuper interface {
	Lookup(p resource.Path) (*cache.Value, cache.Meta, bool)
}
