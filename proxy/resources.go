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
