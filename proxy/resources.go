package proxy

import (
	"context"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Fetcher fetches a resource from the KBS (kbsclient.Client).
type Fetcher interface {
	Resource(ctx context.Context, p resource.Path) ([]byte, error)
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
}

// Resource implements Resources.
func (c *CachedResources) Resource(ctx context.Context, p resource.Path, refresh bool) (*cache.Value, cache.Meta, error) {
	return c.Cache.Get(ctx, p.String(), refresh, func(ctx context.Context) ([]byte, error) {
		return c.KBS.Resource(ctx, p)
	})
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
