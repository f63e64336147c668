package core

import (
	"context"
	"fmt"
	"os"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/resource"
	"github.com/cdh-proxy/cdh-proxy/sealed"
)

// Fetch returns a copy of what a KBS URI names, as CDH's GetResource takes
// it: kbs:///<repo>/<type>/<tag> is a resource, kbs+<plugin>:///<path>[?query]
// a plugin call. A copy, because the cached buffer may be released (and
// zeroed) once the caller is done with it.
func (c *Secrets) Fetch(ctx context.Context, uri string) ([]byte, error) {
	if !resource.IsPluginURI(uri) {
		p, err := resource.ParseURI(uri)
		if err != nil {
			return nil, err
		}
		return c.fetchResource(ctx, p)
	}
	pl, err := resource.ParsePluginURI(uri)
	if err != nil {
		return nil, err
	}
	v, _, err := c.Plugin(ctx, pl, false)
	return copyOut(v, err)
}

// Unseal resolves a sealed secret ("sealed.<jws>"): its signature is
// checked with the key its kid names (unless verification is skipped), then
// the resource it names is fetched.
func (c *Secrets) Unseal(ctx context.Context, input string) ([]byte, error) {
	verify := !c.SkipSealedSecretVerification
	sec, err := sealed.Parse(input, verify)
	if err != nil {
		return nil, err
	}
	if verify {
		key, err := c.signingKey(ctx, sec.Header.Kid)
		if err != nil {
			return nil, err
		}
		if err := sec.Verify(key); err != nil {
			return nil, err
		}
	}
	p, err := resource.ParseURI(sec.Secret.Name)
	if err != nil {
		return nil, err
	}
	return c.fetchResource(ctx, p)
}

func (c *Secrets) fetchResource(ctx context.Context, p resource.Path) ([]byte, error) {
	v, _, err := c.Resource(ctx, p, false)
	return copyOut(v, err)
}

// copyOut copies a value out of the cache and releases it.
func copyOut(v *cache.Value, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer v.Release()
	return append([]byte(nil), v.Bytes()...), nil
}

func (c *Secrets) signingKey(ctx context.Context, kid string) ([]byte, error) {
	dir := c.SealedKeyDir
	if dir == "" {
		dir = sealed.LocalKeyDir
	}
	file, local, err := sealed.KidFile(dir, kid)
	if err != nil {
		return nil, err
	}
	if local {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%w: signing key %s: %v", sealed.ErrSignature, file, err)
		}
		return b, nil
	}
	p, err := resource.ParseURI(kid)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", kid, err)
	}
	b, err := c.fetchResource(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", kid, err)
	}
	return b, nil
}
