package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/detect"
	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/proxy"
)

// parts says which faces one process serves: the HTTP API and/or the CDH
// and AA sockets. All of them share one KBS client (one token) and one cache.
type parts struct {
	http bool
	cdh  bool // serve cfg.CDHSocket
	aa   bool // serve cfg.AASocket
}

// runDaemon wires config into components and runs them until ctx ends.
// Sockets and listeners are bound before anything talks to the KBS, so kata's
// socket wait never depends on the KBS.
func runDaemon(ctx context.Context, cfg *config.Config, p parts, log *slog.Logger) error {
	c, err := cache.New(cache.Config{TTL: cfg.CacheTTL, MaxBytes: cfg.CacheMaxByte, MaxEntryBytes: cfg.CacheMaxItem,
		FetchTimeout: cfg.Budget, StaleIfError: cfg.StaleIfError})
	if err != nil {
		return configError{err}
	}
	defer c.Close()
	// The KBS client reports step latencies to the metrics, and the metrics
	// read the client's counters at scrape time (only once serving starts,
	// after kbs is set).
	var kbs *kbsclient.Client
	metrics, err := proxy.NewMetrics(proxy.StatsSource{
		Cache: c.Stats, KBS: func() kbsclient.Stats { return kbs.Stats() }, TokenExpiry: func() time.Time { return kbs.TokenExpiry() },
	})
	if err != nil {
		return err
	}
	att, kbs, err := newKBSClient(ctx, cfg, log, metrics.ObserveKBS)
	if err != nil {
		return err
	}
	defer kbs.Close()
	cachePlugins := map[string]bool{}
	for _, name := range cfg.CachePlugins {
		cachePlugins[name] = true
	}
	res := &proxy.CachedResources{Cache: c, KBS: kbs, CachePlugins: cachePlugins}
	var credsDone atomic.Bool
	credsDone.Store(len(cfg.Credentials) == 0 || !p.cdh)
	ready := func() bool { return kbs.HasToken() && credsDone.Load() }

	var runners []func(context.Context) error
	announce := func() {}
	if p.http {
		h, err := proxy.NewHandler(proxy.Config{
			Resources: res, Ready: ready, Budget: cfg.Budget, Logger: log,
			Features: cfg.Features, Evidence: att.Evidence, Token: kbs.Token, Metrics: metrics, RequireHeader: cfg.RequireHeader,
		})
		if err != nil {
			return configError{err}
		}
		ln, err := net.Listen("tcp", cfg.Bind)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Bind, err)
		}
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			log.Warn("listening on a non-loopback address; non-loopback peers are still refused with 403", "addr", ln.Addr().String())
		}
		// Announced once every socket is bound too: "listening" means ready.
		announce = func() {
			log.Info("listening", "addr", ln.Addr().String(), "kbs", strings.Join(cfg.KBSURLs, ","), "kbs_url_from", cfg.KBSURLSource,
				"attester", att.Tee(), "cache_ttl", cfg.CacheTTL, "features", cfg.Features, "initdata", cfg.InitDataPath)
		}
		runners = append(runners, func(ctx context.Context) error { return proxy.Serve(ctx, ln, h, cfg.Budget, drainTimeout) })
	}
	if cfg.MetricsBind != "" {
		mln, err := net.Listen("tcp", cfg.MetricsBind)
		if err != nil {
			return fmt.Errorf("listen on --metrics-bind %s: %w", cfg.MetricsBind, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler())
		log.Info("serving metrics", "addr", mln.Addr().String())
		runners = append(runners, func(ctx context.Context) error { return proxy.Serve(ctx, mln, mux, cfg.Budget, drainTimeout) })
	}
	addSocket := func(name, uri string, register func(*ttrpc.Server) error) error {
		srv, err := proxy.NewTTRPCServer()
		if err != nil {
			return err
		}
		if err := register(srv); err != nil {
			return err
		}
		ln, err := proxy.ListenUnix(uri)
		if err != nil {
			return fmt.Errorf("%s socket: %w", name, err)
		}
		log.Info("serving ttrpc", "api", name, "socket", uri, "kbs", strings.Join(cfg.KBSURLs, ","), "attester", att.Tee())
		runners = append(runners, func(ctx context.Context) error { return proxy.ServeTTRPC(ctx, ln, srv, drainTimeout) })
		return nil
	}
	if p.cdh {
		if err := addSocket("cdh", cfg.CDHSocket, func(s *ttrpc.Server) error {
			return proxy.RegisterCDH(s, proxy.CDHConfig{Resources: res, SkipSealedSecretVerification: cfg.SkipSealedSecretVerification, Budget: cfg.Budget, Logger: log})
		}); err != nil {
			return err
		}
	}
	if p.aa {
		if err := addSocket("aa", cfg.AASocket, func(s *ttrpc.Server) error {
			return proxy.RegisterAA(s, proxy.AAConfig{Tee: att.Tee(), Evidence: att.Evidence, Token: kbs.Token, Budget: cfg.Budget})
		}); err != nil {
			return err
		}
	}
	if len(runners) == 0 {
		return configError{errors.New("nothing to serve")}
	}

	announce()
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	// Background work, never blocking startup: attest, fetch credentials.
	go func() { _ = kbs.Attest(ctx) }()
	if p.cdh && len(cfg.Credentials) > 0 {
		creds := make([]proxy.Credential, len(cfg.Credentials))
		for i, c := range cfg.Credentials {
			creds[i] = proxy.Credential{ResourceURI: c.ResourceURI, Path: c.Path}
		}
		go proxy.FetchCredentials(ctx, res, creds, log, func() { credsDone.Store(true) })
	}
	sweep := max(cfg.CacheTTL, time.Second)
	runners = append(runners, func(ctx context.Context) error { return c.Run(ctx, sweep) })
	return runAll(ctx, runners)
}

// newKBSClient builds the attester and the KBS client from cfg: the one
// place serve, the drop-ins and get do it.
func newKBSClient(ctx context.Context, cfg *config.Config, log *slog.Logger, trace func(string, time.Duration)) (attester.Attester, *kbsclient.Client, error) {
	env, err := hardwareEnv(detect.Env{
		Logger: log, TDXEventLog: cfg.TDXEventLog,
		Azure:                azure.Options{TPM: cfg.TPM, IMDS: cfg.AzureIMDS},
		AzureEvidenceVersion: cfg.AzureEvidenceVersion,
	})
	if err != nil {
		return nil, nil, err
	}
	att, err := detect.New(ctx, cfg.Attester, env)
	if err != nil {
		return nil, nil, configError{err}
	}
	if err := bindInitData(ctx, att, cfg.InitData, log); err != nil {
		return nil, nil, err
	}
	hc, err := kbsclient.NewHTTPClient(cfg.KBSCerts...)
	if err != nil {
		return nil, nil, configError{err}
	}
	kbs, err := kbsclient.New(kbsclient.Config{
		URL: cfg.KBSURLs[0], URLs: cfg.KBSURLs[1:], FailbackAfter: cfg.KBSFailback, Attester: att, KeyAlgorithm: kbsclient.KeyAlgorithm(cfg.KeyAlgorithm), InitData: cfg.InitData,
		HTTPClient: hc, Logger: log, HandshakeTimeout: cfg.Budget, Trace: trace,
	})
	if err != nil {
		return nil, nil, configError{err}
	}
	return att, kbs, nil
}

// bindInitData measures init-data into the TEE where the attester does it
// itself (Azure vTPM: PCR8); TDX and SNP carry it in MRCONFIGID/HOSTDATA,
// set by the host at launch.
func bindInitData(ctx context.Context, att attester.Attester, initData []byte, log *slog.Logger) error {
	b, ok := att.(interface {
		BindInitData(ctx context.Context, algorithm string, digest []byte) (bool, error)
	})
	if !ok || initData == nil {
		return nil
	}
	alg, digest, err := config.InitDataDigest(initData)
	if err != nil {
		return configError{err}
	}
	extended, err := b.BindInitData(ctx, alg, digest)
	if errors.Is(err, azure.ErrInitDataAlgorithm) {
		return configError{err}
	}
	if err != nil {
		return fmt.Errorf("bind init-data: %w", err)
	}
	log.Info("init-data bound", "tee", att.Tee(), "pcr", 8, "extended", extended)
	return nil
}

// runAll runs every runner; the first error cancels the rest (cf. SPIRE's
// util.RunTasks). It returns once all have stopped.
func runAll(ctx context.Context, runners []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(runners))
	for _, r := range runners {
		go func() { errc <- r(ctx) }()
	}
	var first error
	for range runners {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// runForwarder is the api-server-rest personality installed beside separate
// confidential-data-hub and attestation-agent processes: HTTP only, every
// request forwarded to their sockets (so all share CDH's cache and token).
func runForwarder(ctx context.Context, bind, features, cdhAddr, aaAddr string, log *slog.Logger) error {
	cdhRemote, err := proxy.NewRemote(cdhAddr)
	if err != nil {
		return configError{err}
	}
	defer cdhRemote.Close()
	aaRemote, err := proxy.NewRemote(aaAddr)
	if err != nil {
		return configError{err}
	}
	defer aaRemote.Close()
	remoteAA := proxy.RemoteAA{Remote: aaRemote}
	h, err := proxy.NewHandler(proxy.Config{
		Resources: proxy.RemoteCDH{Remote: cdhRemote}, Logger: log, Features: features,
		Evidence: remoteAA.Evidence, Token: remoteAA.Token,
	})
	if err != nil {
		return configError{err}
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", bind, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "mode", "api-server-rest (forwarding)", "cdh_addr", cdhAddr, "aa_addr", aaAddr, "features", features)
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	err = proxy.Serve(ctx, ln, h, proxy.DefaultBudget, drainTimeout)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
