// Package credentials writes KBS resources to files at startup (cdh.toml
// [[credentials]], kernel cmdline cdh.kbs_resources), as CDH does, but
// after the sockets are bound: a slow or down KBS never fails pod start.
package credentials

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/securefile"
)

// Credential is a resource written to a file.
type Credential struct {
	ResourceURI string
	Path        string
}

// Fetcher fetches what a KBS URI names (core.Secrets).
type Fetcher interface {
	Fetch(ctx context.Context, uri string) ([]byte, error)
}

// Writer writes its credentials once, retrying with capped backoff.
type Writer struct {
	secrets Fetcher
	creds   []Credential
	log     *slog.Logger
	done    atomic.Bool
}

// New returns a Writer for creds; with none it is done from the start.
func New(secrets Fetcher, creds []Credential, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Writer{secrets: secrets, creds: append([]Credential(nil), creds...), log: log}
	w.done.Store(len(creds) == 0)
	return w
}

// Done reports whether every credential has been written (for /readyz).
func (w *Writer) Done() bool { return w.done.Load() }

// Run writes each credential's resource to its file (0600, atomically),
// retrying the failed ones with backoff (1 s doubling to 30 s) until all
// are written or ctx ends. It returns nil either way: a credential that
// cannot be fetched yet is logged, not fatal.
func (w *Writer) Run(ctx context.Context) error {
	pending := w.creds
	delay := time.Second
	for len(pending) > 0 {
		var failed []Credential
		for _, c := range pending {
			if err := w.write(ctx, c); err != nil {
				w.log.Warn("credential not fetched yet", "uri", c.ResourceURI, "path", c.Path, "err", err)
				failed = append(failed, c)
				continue
			}
			w.log.Info("credential written", "uri", c.ResourceURI, "path", c.Path)
		}
		if pending = failed; len(pending) == 0 {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, 30*time.Second)
	}
	w.done.Store(true)
	return nil
}

func (w *Writer) write(ctx context.Context, c Credential) error {
	b, err := w.secrets.Fetch(ctx, c.ResourceURI)
	if err != nil {
		return err
	}
	defer clear(b)
	return securefile.Write(c.Path, b)
}
