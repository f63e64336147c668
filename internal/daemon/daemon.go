// Package daemon builds cdh-proxy's components from a config.Config and
// runs them as one flat list of owned tasks (cf. SPIRE's agent): the HTTP
// API, the metrics listener, the CDH and AA ttrpc sockets, the cache
// sweeper, the start-up attestation and the credentials writer. The first
// task to fail stops the others; Run returns once every goroutine it
// started has ended. The hardware the attesters read is passed in.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/credentials"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/imagepull"
	"github.com/cdh-proxy/cdh-proxy/internal/unixsock"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/metrics"
	"github.com/cdh-proxy/cdh-proxy/proxy/forward"
	"github.com/cdh-proxy/cdh-proxy/proxy/httpapi"
	"github.com/cdh-proxy/cdh-proxy/proxy/ttrpcapi"
	"github.com/cdh-proxy/cdh-proxy/securemount"
)

// DrainTimeout bounds how long in-flight requests may finish after stop.
const DrainTimeout = 10 * time.Second

// Parts says which faces one process serves: the HTTP API and/or the CDH
// and AA sockets. All of them share one KBS client (one token) and one cache.
type Parts struct {
	HTTP bool
	CDH  bool // serve cfg.CDHSocket
	AA   bool // serve cfg.AASocket
}

// ServeParts is what `cdh-proxy serve` runs: HTTP, plus the sockets the
// configuration names.
func ServeParts(cfg *config.Config) Parts {
	return Parts{HTTP: true, CDH: cfg.CDHSocket != "", AA: cfg.AASocket != ""}
}

// Options are the daemon's collaborators from outside the configuration.
type Options struct {
	Hardware Hardware
	Logger   *slog.Logger // nil → discard
	// Notify tells a supervisor about readiness (sd_notify); nil → SDNotify.
	Notify func(state string) error
}

// Task is one long-lived part: it runs until ctx ends (or fails).
type Task struct {
	Name string
	Run  func(ctx context.Context) error
}

// Daemon is a built set of components, not yet running.
type Daemon struct {
	log      *slog.Logger
	notify   func(string) error
	tasks    []Task
	closers  []func() // run in reverse order once every task has ended
	announce []func()
	httpAddr string
}

// ConfigError marks failures the operator fixes in configuration.
type ConfigError struct{ Err error }

func (e ConfigError) Error() string { return e.Err.Error() }
func (e ConfigError) Unwrap() error { return e.Err }

// New builds the components and binds every listener and socket, before
// anything talks to the KBS, so kata's socket wait never depends on it.
// On error everything built so far is released.
func New(ctx context.Context, cfg *config.Config, parts Parts, opt Options) (_ *Daemon, err error) {
	d := &Daemon{log: opt.Logger, notify: opt.Notify}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.notify == nil {
		d.notify = SDNotify
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	log := d.log
	c, err := cache.New(cache.Config{TTL: cfg.CacheTTL, MaxBytes: cfg.CacheMaxByte, MaxEntryBytes: cfg.CacheMaxItem,
		FetchTimeout: cfg.Budget, StaleIfError: cfg.StaleIfError})
	if err != nil {
		return nil, ConfigError{err}
	}
	d.closers = append(d.closers, c.Close)
	// The metrics read the client's counters at scrape time, which only
	// starts once serving does, after kbs is set.
	var kbs *kbsclient.Client
	m, err := metrics.New(metrics.StatsSource{
		Cache: c.Stats, KBS: func() kbsclient.Stats { return kbs.Stats() }, TokenExpiry: func() time.Time { return kbs.TokenExpiry() },
	})
	if err != nil {
		return nil, err
	}
	att, err := NewAttester(ctx, cfg, opt.Hardware, log)
	if err != nil {
		return nil, err
	}
	if kbs, err = NewKBSClient(cfg, att, log, m.ObserveKBS); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, kbs.Close)
	// The process that plays the attestation agent keeps the runtime
	// event log; the CDH drop-in asks the AA process over its socket.
	var recorder *eventlog.Recorder
	if cfg.EventLog && (parts.AA || parts.HTTP) {
		if recorder, err = d.openEventLog(ctx, cfg, att); err != nil {
			return nil, err
		}
	}
	measure := func(ctx context.Context, ev eventlog.Event) (eventlog.Result, error) {
		return recorder.Record(ctx, ev, nil)
	}
	if !parts.AA && !parts.HTTP {
		// Only measuring needs the AA socket: a bad one is warned about,
		// not fatal, as upstream's CDH fails only to find it.
		if remote, err := forward.NewRemote(cfg.AAAddr); err != nil {
			log.Warn("the AA socket is unusable: pulled images are not measured", "aa_socket", cfg.AAAddr, "err", err)
			measure = nil
		} else {
			d.closers = append(d.closers, func() { remote.Close() })
			measure = forward.RemoteAA{Remote: remote}.Measure
		}
	}
	cachePlugins := map[string]bool{}
	for _, name := range cfg.CachePlugins {
		cachePlugins[name] = true
	}
	secrets := &core.Secrets{Cache: c, KBS: kbs, CachePlugins: cachePlugins, SkipSealedSecretVerification: cfg.SkipSealedSecretVerification}
	var creds []credentials.Credential
	if parts.CDH {
		for _, cr := range cfg.Credentials {
			creds = append(creds, credentials.Credential{ResourceURI: cr.ResourceURI, Path: cr.Path})
		}
	}
	writer := credentials.New(secrets, creds, log)
	ready := func() bool { return kbs.HasToken() && writer.Done() }
	kbsList := strings.Join(cfg.KBSURLs, ",")

	if parts.HTTP {
		h, err := httpapi.NewHandler(httpapi.Config{
			Resources: secrets, Ready: ready, Budget: cfg.Budget, Logger: log,
			Features: cfg.Features, Evidence: att.Evidence, Token: kbs.Token, Measure: measure, Metrics: m, RequireHeader: cfg.RequireHeader,
		})
		if err != nil {
			return nil, ConfigError{err}
		}
		ln, err := d.listen(cfg.Bind, "")
		if err != nil {
			return nil, err
		}
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			log.Warn("listening on a non-loopback address; non-loopback peers are still refused with 403", "addr", ln.Addr().String())
		}
		d.httpAddr = ln.Addr().String()
		// Announced once every socket is bound too: "listening" means ready.
		d.announce = append(d.announce, func() {
			log.Info("listening", "addr", ln.Addr().String(), "kbs", kbsList, "kbs_url_from", cfg.KBSURLSource,
				"attester", att.Tee(), "cache_ttl", cfg.CacheTTL, "features", cfg.Features.String(), "initdata", cfg.InitDataPath)
		})
		d.tasks = append(d.tasks, Task{"http", func(ctx context.Context) error { return httpapi.Serve(ctx, ln, h, cfg.Budget, DrainTimeout) }})
	}
	if cfg.MetricsBind != "" {
		mln, err := d.listen(cfg.MetricsBind, "--metrics-bind ")
		if err != nil {
			return nil, err
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", m.Handler())
		log.Info("serving metrics", "addr", mln.Addr().String())
		d.tasks = append(d.tasks, Task{"metrics", func(ctx context.Context) error { return httpapi.Serve(ctx, mln, mux, cfg.Budget, DrainTimeout) }})
	}
	if parts.CDH {
		// Guest image pull: nothing is touched until the first PullImage,
		// so the resource path starts and runs as without it.
		icfg, err := imageConfig(cfg.Image)
		if err != nil {
			return nil, ConfigError{err}
		}
		images := imagepull.New(icfg, secrets, imagepull.Options{Logger: log, Observer: m, FetchBudget: cfg.Budget})
		d.closers = append(d.closers, images.Close)
		if err := d.socket("cdh", cfg.CDHSocket, cfg, att.Tee(), func(s *ttrpc.Server) error {
			return ttrpcapi.RegisterCDH(s, ttrpcapi.CDHConfig{Secrets: secrets, Images: images, Budget: cfg.Budget, Logger: log,
				Mounts:  securemount.New(securemount.Config{Keys: secrets, Logger: log.With("component", "securemount")}),
				Measure: measure})
		}); err != nil {
			return nil, err
		}
	}
	if parts.AA {
		if err := d.socket("aa", cfg.AASocket, cfg, att.Tee(), func(s *ttrpc.Server) error {
			return ttrpcapi.RegisterAA(s, ttrpcapi.AAConfig{Tee: att.Tee(), Evidence: att.Evidence, Token: kbs.Token, Measure: recorder, Budget: cfg.Budget})
		}); err != nil {
			return nil, err
		}
	}
	if len(d.tasks) == 0 {
		return nil, ConfigError{errors.New("nothing to serve")}
	}
	sweep := max(cfg.CacheTTL, time.Second)
	d.tasks = append(d.tasks, Task{"cache-sweeper", func(ctx context.Context) error { return c.Run(ctx, sweep) }})
	if parts.HTTP {
		// The sidecar attests in the background at start so the first
		// request does not pay for it; a failure is logged by the client
		// and retried on use. The drop-in processes do not: kata starts
		// them in every pod, most pods never ask for a secret, and each
		// attestation costs the KBS a verifier run. The CDH process
		// attests before its first request only when [[credentials]] give
		// it something to fetch (the writer's fetch attests), the AA
		// process only when asked for a token; guest-components attests
		// no more.
		d.tasks = append(d.tasks, Task{"startup-attestation", func(ctx context.Context) error { _ = kbs.Attest(ctx); return nil }})
	}
	d.tasks = append(d.tasks, Task{"credentials", writer.Run})
	return d, nil
}

func (d *Daemon) listen(addr, what string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s%s: %w", what, addr, err)
	}
	d.closers = append(d.closers, func() { ln.Close() })
	return ln, nil
}

func (d *Daemon) socket(name, uri string, cfg *config.Config, tee string, register func(*ttrpc.Server) error) error {
	srv, err := ttrpcapi.NewServer()
	if err != nil {
		return err
	}
	if err := register(srv); err != nil {
		return err
	}
	ln, err := unixsock.Listen(uri)
	if err != nil {
		return fmt.Errorf("%s socket: %w", name, err)
	}
	d.closers = append(d.closers, func() { ln.Close() })
	d.log.Info("serving ttrpc", "api", name, "socket", uri, "kbs", strings.Join(cfg.KBSURLs, ","), "kbs_url_from", cfg.KBSURLSource, "attester", tee)
	d.tasks = append(d.tasks, Task{name + "-ttrpc", func(ctx context.Context) error { return ttrpcapi.Serve(ctx, ln, srv, DrainTimeout) }})
	return nil
}

// HTTPAddr is the bound HTTP address ("" without the HTTP part).
func (d *Daemon) HTTPAddr() string { return d.httpAddr }

// Tasks lists the tasks Run will run, by name.
func (d *Daemon) Tasks() []string {
	names := make([]string, len(d.tasks))
	for i, t := range d.tasks {
		names[i] = t.Name
	}
	return names
}

// Run announces readiness, runs every task until ctx ends or one fails,
// and releases everything once they have all stopped.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	for _, a := range d.announce {
		a()
	}
	if err := d.notify("READY=1"); err != nil {
		d.log.Warn("sd_notify failed", "err", err)
	}
	return RunTasks(ctx, d.tasks...)
}

func (d *Daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// RunTasks runs every task; the first error cancels the rest (cf. SPIRE's
// util.RunTasks). A task returning nil early leaves the others running. It
// returns once all have stopped.
func RunTasks(ctx context.Context, tasks ...Task) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(tasks))
	for _, t := range tasks {
		go func() {
			err := t.Run(ctx)
			if err != nil {
				err = fmt.Errorf("%s: %w", t.Name, err)
			}
			errc <- err
		}()
	}
	var first error
	for range tasks {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// imageConfig is cdh.toml's [image] as imagepull takes it.
func imageConfig(im config.Image) (imagepull.Config, error) {
	regs, err := im.RegistriesTOML()
	if err != nil {
		return imagepull.Config{}, fmt.Errorf("[image.registry_config]: %w", err)
	}
	c := imagepull.Config{
		WorkDir: im.WorkDir, MaxConcurrentLayerDownloads: im.MaxConcurrentLayerDownloads,
		PolicyURI: im.PolicyURI, Policy: im.Policy, SigstoreConfigURI: im.SigstoreConfigURI,
		AuthURI: im.AuthURI, RegistriesURI: im.RegistriesURI, Registries: regs,
		ExtraRootCertificates: im.ExtraRootCertificates,
	}
	if px := im.Proxy; px != nil {
		c.HTTPSProxy, c.HTTPProxy, c.NoProxy = px.HTTPSProxy, px.HTTPProxy, px.NoProxy
	}
	return c, nil
}
