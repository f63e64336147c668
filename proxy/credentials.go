package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Credential is a resource written to a file at startup (cdh.toml
// [[credentials]], kernel cmdline cdh.kbs_resources).
type Credential struct {
	ResourceURI string
	Path        string
}

// FetchCredentials writes each credential's resource to its file (0600,
// written atomically), retrying with capped backoff until all are written or
// ctx ends. Unlike upstream CDH it runs after the socket is bound, so a slow
// or down KBS never fails pod start; done is called once all are written.
func FetchCredentials(ctx context.Context, res Resources, creds []Credential, log *slog.Logger, done func()) {
	pending := append([]Credential(nil), creds...)
	delay := time.Second
	for len(pending) > 0 {
		var failed []Credential
		for _, c := range pending {
			if err := fetchCredential(ctx, res, c); err != nil {
				log.Warn("credential not fetched yet", "uri", c.ResourceURI, "path", c.Path, "err", err)
				failed = append(failed, c)
				continue
			}
			log.Info("credential written", "uri", c.ResourceURI, "path", c.Path)
		}
		pending = failed
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
	if done != nil {
		done()
	}
}

func fetchCredential(ctx context.Context, res Resources, c Credential) error {
	p, err := resource.ParseURI(c.ResourceURI)
	if err != nil {
		return err
	}
	v, _, err := res.Resource(ctx, p, false)
	if err != nil {
		return err
	}
	defer v.Release()
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.Path), ".cred-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(v.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), c.Path); err != nil {
		return fmt.Errorf("write %s: %w", c.Path, err)
	}
	return nil
}
