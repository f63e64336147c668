// Package httpapi is the HTTP front end workloads curl: api-server-rest's
// routes (/cdh/resource, /aa/evidence, /aa/token), KBS plugins, health and
// metrics, behind the loopback guard. Statuses come from core.Classify;
// it never speaks the KBS protocol itself.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/metrics"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Resources serves resources (core.Secrets, or forward.RemoteCDH).
type Resources interface {
	Resource(ctx context.Context, p resource.Path, refresh bool) (*cache.Value, cache.Meta, error)
}

// Plugins serves calls to KBS plugins other than resource; the handler
// finds it on its Resources by type assertion.
type Plugins interface {
	Plugin(ctx context.Context, p resource.Plugin, refresh bool) (*cache.Value, cache.Meta, error)
}

// lookuper is the optional allocation-free hit path of a Resources.
type lookuper interface {
	Lookup(p resource.Path) (*cache.Value, cache.Meta, bool)
}

// DefaultBudget is the total time one caller request may take: below
// kata-agent's 50 s so a failure is reported before the caller gives up.
const DefaultBudget = 30 * time.Second

// Config configures the HTTP API.
type Config struct {
	Resources Resources     // required
	Ready     func() bool   // /readyz; nil → always ready
	Budget    time.Duration // per request; zero → DefaultBudget
	Logger    *slog.Logger  // nil → discard
	// Features enables route groups as api-server-rest's --features; the
	// zero value serves resources only.
	Features core.Features
	// Evidence serves /aa/evidence and Token /aa/token; both required when
	// attestation is enabled.
	Evidence core.EvidenceFunc
	Token    core.TokenFunc
	// Measure serves POST /aa/aael; nil answers as a disabled event log.
	Measure eventlog.MeasureFunc
	// Metrics, when set, counts requests and is served at /metrics.
	Metrics *metrics.Metrics
	// RequireHeader, when set, must be present on every request (anti-SSRF).
	RequireHeader string
}

// NewHandler returns the HTTP API.
func NewHandler(cfg Config) (http.Handler, error) {
	if cfg.Resources == nil {
		return nil, errors.New("httpapi: Resources is required")
	}
	if cfg.Budget <= 0 {
		cfg.Budget = DefaultBudget
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Ready == nil {
		cfg.Ready = func() bool { return true }
	}
	if !cfg.Features.Resource && !cfg.Features.Attestation {
		cfg.Features.Resource = true
	}
	resourceOn, attestationOn := cfg.Features.Resource, cfg.Features.Attestation
	if attestationOn && (cfg.Evidence == nil || cfg.Token == nil) {
		return nil, errors.New("httpapi: Evidence and Token are required with the attestation feature")
	}
	h := &handler{cfg: cfg, log: cfg.Logger.With("component", "http")}
	h.plugins, _ = cfg.Resources.(Plugins)
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler { return guardWith(cfg.RequireHeader, next) })
	resourceRoute := http.HandlerFunc(h.resource)
	if !resourceOn {
		resourceRoute = featureOff("resource")
	}
	if resourceOn && h.plugins != nil {
		r.HandleFunc("/cdh/plugin/*", h.plugin)
	} else if !resourceOn {
		r.HandleFunc("/cdh/plugin/*", featureOff("resource"))
	}
	if attestationOn {
		r.Get("/aa/evidence", h.evidence)
		r.Get("/aa/token", h.token)
		r.Post("/aa/aael", h.aael)
	} else {
		r.Get("/aa/evidence", featureOff("attestation"))
		r.Get("/aa/token", featureOff("attestation"))
		r.Post("/aa/aael", featureOff("attestation"))
	}
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeText(w, http.StatusOK, "ok\n") })
	r.Get("/readyz", h.readyz)
	if cfg.Metrics != nil {
		r.Handle("/metrics", cfg.Metrics.Handler())
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, core.Problem{Type: "urn:cdh-proxy:not-found", Title: "Not Found", Status: http.StatusNotFound,
			Detail: "no such endpoint; secrets are at /cdh/resource/<repo>/<type>/<tag>, KBS plugins at /cdh/plugin/<plugin>/<path>"})
	})
	return &hotRoute{resource: guardWith(cfg.RequireHeader, resourceRoute), rest: r}, nil
}

// hotRoute sends /cdh/resource/ straight to its (guarded) handler and
// everything else through chi: chi's per-request routing context costs four
// allocations, which on a warm hit were all the allocations left (pprof
// -sample_index=alloc_objects on BenchmarkHandlerHit).
type hotRoute struct {
	resource http.Handler
	rest     http.Handler
}

func (h *hotRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/cdh/resource/") {
		h.resource.ServeHTTP(w, r)
		return
	}
	h.rest.ServeHTTP(w, r)
}

type handler struct {
	cfg     Config
	plugins Plugins // nil when Resources serves no plugins
	log     *slog.Logger
}

func (h *handler) resource(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeProblem(w, core.Classify(core.ErrMethod))
		return
	}
	// The escaped path, so that %2F inside a segment is seen as such.
	escaped := strings.TrimPrefix(r.URL.EscapedPath(), "/cdh/resource/")
	p, err := resource.ParseEscaped(escaped)
	if err != nil {
		h.fail(w, r, "resource", core.Classify(err), "err", err)
		return
	}
	refresh := noCache(r.Header)
	if l, ok := h.cfg.Resources.(lookuper); ok && !refresh {
		if v, meta, ok := l.Lookup(p); ok {
			writeResource(w, r, v, meta)
			h.cfg.Metrics.Count("resource", http.StatusOK)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	v, meta, err := h.cfg.Resources.Resource(ctx, p, refresh)
	if err != nil {
		h.failBudget(w, r, "resource", p.String(), err)
		return
	}
	writeResource(w, r, v, meta)
	h.cfg.Metrics.Count("resource", http.StatusOK)
}

// plugin serves GET /cdh/plugin/<plugin>/<path…>[?query]: a call to a KBS
// plugin other than resource, query forwarded. Only GET: a plugin answer
// may be minted per call, and HEAD would mint one to throw away.
func (h *handler) plugin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		writeProblem(w, core.Classify(core.ErrMethod))
		return
	}
	name, escaped, _ := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), "/cdh/plugin/"), "/")
	p, err := resource.ParsePlugin(name, escaped, r.URL.RawQuery)
	if err != nil {
		h.fail(w, r, "plugin", core.Classify(err), "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Budget)
	defer cancel()
	v, meta, err := h.plugins.Plugin(ctx, p, noCache(r.Header))
	if err != nil {
		h.failBudget(w, r, "plugin", p.Name+"/"+p.Path, err)
		return
	}
	writeResource(w, r, v, meta)
	h.cfg.Metrics.Count("plugin", http.StatusOK)
}

// failBudget is fail for a KBS call made within the request budget.
func (h *handler) failBudget(w http.ResponseWriter, r *http.Request, route, name string, err error) {
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("request budget of %s exceeded waiting for the KBS: %w", h.cfg.Budget, err)
	}
	prob := core.Classify(err)
	prob.Resource = name
	h.fail(w, r, route, prob, "resource", name, "err", err)
}

// fail answers with prob, logs it with a request ID (the caller's
// X-Request-Id when it sent a sane one, else a fresh one) that the problem
// body carries too, and counts it. Only error paths pay for this.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, route string, prob core.Problem, logArgs ...any) {
	prob.RequestID = requestID(r)
	h.log.Warn("request failed", append([]any{"route", route, "status", prob.Status, "request_id", prob.RequestID}, logArgs...)...)
	writeProblem(w, prob)
	h.cfg.Metrics.Count(route, prob.Status)
}

// Header values shared by every response; net/http never mutates them, and
// assigning them directly saves Header.Set's allocation per header.
var (
	hdrOctetStream = []string{"application/octet-stream"}
	hdrNoStore     = []string{"no-store"}
	hdrNoSniff     = []string{"nosniff"}
	hdrHit         = []string{"HIT"}
	hdrMiss        = []string{"MISS"}
	hdrStale       = []string{"STALE"}
	// RFC 7234 warn-code 111: the cached copy is served because the KBS
	// could not be asked.
	hdrStaleWarning = []string{`111 cdh-proxy "Revalidation Failed"`}
)

// ageHeaders holds ready Age values for the first ten minutes, so a warm
// hit allocates nothing for them; older entries (long TTLs) allocate.
var ageHeaders = func() [][]string {
	t := make([][]string, 600)
	for i := range t {
		t[i] = []string{strconv.Itoa(i)}
	}
	return t
}()

func ageHeader(age time.Duration) []string {
	if s := int(age / time.Second); s >= 0 && s < len(ageHeaders) {
		return ageHeaders[s]
	}
	return []string{strconv.Itoa(int(age / time.Second))}
}

// writeResource sends v and releases it.
func writeResource(w http.ResponseWriter, r *http.Request, v *cache.Value, meta cache.Meta) {
	defer v.Release()
	hdr := w.Header()
	hdr["Content-Type"] = hdrOctetStream
	hdr["Cache-Control"] = hdrNoStore
	hdr["X-Content-Type-Options"] = hdrNoSniff
	hdr["Content-Length"] = v.ContentLength()
	switch {
	case meta.Stale:
		hdr["X-Cache"] = hdrStale
		hdr["Age"] = ageHeader(meta.Age)
		hdr["Warning"] = hdrStaleWarning
	case meta.Hit:
		hdr["X-Cache"] = hdrHit
		hdr["Age"] = ageHeader(meta.Age)
	default:
		hdr["X-Cache"] = hdrMiss
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(v.Bytes())
	}
}

// noCache reports a request's Cache-Control: no-cache (or the HTTP/1.0
// Pragma): the caller wants a fresh copy from the KBS.
func noCache(h http.Header) bool {
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			if d = strings.TrimSpace(d); strings.EqualFold(d, "no-cache") || strings.EqualFold(d, "max-age=0") {
				return true
			}
		}
	}
	return strings.EqualFold(h.Get("Pragma"), "no-cache")
}

func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if h.cfg.Ready() {
		writeText(w, http.StatusOK, "ready: KBS token held\n")
		return
	}
	writeText(w, http.StatusServiceUnavailable, "not ready: no KBS token yet (attestation pending or failing; see logs)\n")
}

func writeText(w http.ResponseWriter, status int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(s))
}

// Serve runs the HTTP API on ln until ctx ends, then drains in-flight
// requests for up to drain. The connection limits (conns.go) are enforced
// by a watcher this function owns.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, budget, drain time.Duration) error {
	if budget <= 0 {
		budget = DefaultBudget
	}
	srv := &http.Server{Handler: h, MaxHeaderBytes: 16 << 10}
	watch := newConnWatch(budget)
	ln = watch.install(srv, ln)
	wctx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watch.run(wctx)
	}()
	defer func() {
		stopWatch()
		<-watched
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		<-errc
		return fmt.Errorf("http drain: %w", err)
	}
	<-errc
	return nil
}
