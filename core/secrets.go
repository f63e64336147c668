package core

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

// Secrets is the one secret service: a cache in front of the KBS client,
// plugin calls, sealed secrets. Every front end (HTTP, CDH ttrpc, the
// credentials writer) shares one, hence one cache and one token.
type Secrets struct {
	Cache *cache.Cache
	KBS   Fetcher
	// SkipSealedSecretVerification accepts unsigned sealed secrets (cdh.toml
	// skip_sealed_secret_verification): only for old workshop setups.
	SkipSealedSecretVerification bool
	// SealedKeyDir resolves bare-name kids; "" → sealed.LocalKeyDir.
	SealedKeyDir string
	// CachePlugins names the plugins whose answers are cached like
	// resources. Others are fetched on every call: a plugin answer may be a
	// per-call credential.
	CachePlugins map[string]bool
}

// Resource serves a resource from the cache, fetching a miss. When the fetch fails for a reason that
// says nothing about the secret itself (KBS down, slow, garbage), the last
// good copy is served if the cache still holds one (cache StaleIfError),
// marked Meta.Stale. A policy denial or a missing resource removes any
// stale copy: those answers are authoritative.
func (c *Secrets) Resource(ctx context.Context, p resource.Path, refresh bool) (*cache.Value, cache.Meta, error) {
	return c.cached(ctx, p.String(), refresh, func(ctx context.Context) ([]byte, error) {
		return c.KBS.Resource(ctx, p)
	})
}

// Plugin calls a KBS plugin: uncached unless the operator listed the plugin
// in CachePlugins, then exactly like a resource (TTL, coalescing,
// stale-if-error).
func (c *Secrets) Plugin(ctx context.Context, p resource.Plugin, refresh bool) (*cache.Value, cache.Meta, error) {
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

func (c *Secrets) cached(ctx context.Context, key string, refresh bool, fetch func(context.Context) ([]byte, error)) (*cache.Value, cache.Meta, error) {
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
func (c *Secrets) withCause(err error, start time.Time) error {
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
// budget timer: the warm path.
func (c *Secrets) Lookup(p resource.Path) (*cache.Value, cache.Meta, bool) {
	return c.Cache.Lookup(p.String())
}
