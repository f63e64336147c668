package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/detect"
	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/proxy"
)

const drainTimeout = 10 * time.Second

// exitConfig is the exit status for configuration errors (as sysexits EX_CONFIG).
const exitConfig = 78

func serveFlags(fs *flag.FlagSet) *config.Flags {
	f := &config.Flags{}
	fs.StringVar(&f.KBSURL, "kbs-url", "", "KBS base URL, e.g. https://kbs.example:8080 (overrides AA_KBC_PARAMS and cdh.toml)")
	fs.StringVar(&f.KBSCert, "kbs-cert", "", "PEM file with an extra root CA for the KBS")
	fs.StringVar(&f.ConfigFile, "c", "", "cdh.toml to read ([kbc] url, kbs_cert, [log] level)")
	fs.StringVar(&f.Attester, "attester", "auto", "evidence source: auto, tdx, snp, or sample (development only)")
	fs.StringVar(&f.KeyAlgorithm, "tee-key-alg", "", "ephemeral TEE key: ECDH-ES+A256KW-P256 (default), ECDH-ES+A256KW-P521, RSA-OAEP-256")
	fs.StringVar(&f.Bind, "bind", "", "HTTP listen address (default "+config.DefaultBind+")")
	fs.Func("cache-ttl", "how long a fetched secret is served from memory; 0 disables caching (default 60s). Rotated secrets reach workloads within this time", func(s string) error {
		d, err := time.ParseDuration(s)
		f.CacheTTL = &d
		return err
	})
	fs.Int64Var(&f.CacheMaxByte, "cache-max-bytes", 0, "bound on cached plaintext (default 64 MiB)")
	fs.Int64Var(&f.CacheMaxItem, "cache-max-entry", 0, "largest secret that is cached; larger ones are served uncached (default 1 MiB)")
	fs.DurationVar(&f.Budget, "budget", 0, "total time for one request, attestation included (default 30s)")
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&f.LogFormat, "log-format", "", "text or json (default text)")
	fs.StringVar(&f.Features, "features", "", "HTTP route groups, as api-server-rest: resource (default), attestation (/aa/evidence) or all")
	fs.StringVar(&f.TDXEventLog, "tdx-eventlog", "", "TDX: send this CCEL file (e.g. /sys/firmware/acpi/tables/data/CCEL) as cc_eventlog; default null")
	fs.StringVar(&f.InitData, "initdata", "", "initdata TOML sent as init-data (default "+config.DefaultInitDataPath+" when it exists)")
	return f
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cdh-proxy serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := serveFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdh-proxy serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg, err := config.Load(*f, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-proxy: configuration: %v\n", err)
		return exitConfig
	}
	log := newLogger(stderr, cfg)
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runServer(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		var ce configError
		if errors.As(err, &ce) {
			return exitConfig
		}
		return 1
	}
	return 0
}

// configError marks failures the operator fixes in configuration.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func runServer(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	env, err := hardwareEnv(detect.Env{Logger: log, TDXEventLog: cfg.TDXEventLog})
	if err != nil {
		return err
	}
	att, err := detect.New(cfg.Attester, env)
	if err != nil {
		return configError{err}
	}
	hc, err := kbsclient.NewHTTPClient(cfg.KBSCerts...)
	if err != nil {
		return configError{err}
	}
	kbs, err := kbsclient.New(kbsclient.Config{
		URL: cfg.KBSURL, Attester: att, KeyAlgorithm: kbsclient.KeyAlgorithm(cfg.KeyAlgorithm), InitData: cfg.InitData,
		HTTPClient: hc, Logger: log, HandshakeTimeout: cfg.Budget,
	})
	if err != nil {
		return configError{err}
	}
	defer kbs.Close()
	c, err := cache.New(cache.Config{TTL: cfg.CacheTTL, MaxBytes: cfg.CacheMaxByte, MaxEntryBytes: cfg.CacheMaxItem, FetchTimeout: cfg.Budget})
	if err != nil {
		return configError{err}
	}
	h, err := proxy.NewHandler(proxy.Config{
		Resources: &proxy.CachedResources{Cache: c, KBS: kbs},
		Ready:     kbs.HasToken, Budget: cfg.Budget, Logger: log,
		Features: cfg.Features, Evidence: att.Evidence,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Bind, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("listening on a non-loopback address; non-loopback peers are still refused with 403", "addr", ln.Addr().String())
	}
	log.Info("listening", "addr", ln.Addr().String(), "kbs", cfg.KBSURL, "kbs_url_from", cfg.KBSURLSource,
		"attester", att.Tee(), "cache_ttl", cfg.CacheTTL, "features", cfg.Features, "initdata", cfg.InitDataPath)

	// Attest in the background: startup never waits for the KBS. A failure
	// is logged by kbsclient and retried on the next request.
	go func() { _ = kbs.Attest(ctx) }()
	sweep := max(cfg.CacheTTL, time.Second)
	cacheDone := make(chan struct{})
	go func() { _ = c.Run(ctx, sweep); close(cacheDone) }()

	err = proxy.Serve(ctx, ln, h, cfg.Budget, drainTimeout)
	<-cacheDone // Run purges (and so zeroes) the cache once ctx ends
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

func newLogger(w io.Writer, cfg *config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
