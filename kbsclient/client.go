// Package kbsclient speaks the Trustee KBS protocol (RCAR: auth → attest →
// token) and fetches resources as JWE, decrypting them with the ephemeral TEE
// key the token was issued for. It keeps one token per client, refreshes it
// before expiry, and shares one handshake among concurrent callers. Given
// several KBS endpoints it fails over between them (endpoints.go). It does
// not cache resources (package cache does).
package kbsclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Defaults for zero Config fields.
const (
	DefaultMaxResponseBytes = 8 << 20
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultMaxRetries       = 3
	// refreshRetryDelay spaces background refresh attempts after a failure, so
	// a down KBS sees one attempt per delay, not one per request.
	refreshRetryDelay = 5 * time.Second
)

// Config configures a Client. A URL and Attester are required.
type Config struct {
	URL string // KBS base URL, e.g. https://kbs.example:8080
	// URLs are further KBS base URLs, in order of preference, after URL:
	// the same KBS reachable under other addresses (a restarted or
	// replicated Trustee). The first one that answers is used.
	URLs []string
	// FailbackAfter is how long an endpoint that failed is passed over
	// before it is preferred again; zero → DefaultFailbackAfter.
	FailbackAfter    time.Duration
	Attester         attester.Attester // evidence source
	KeyAlgorithm     KeyAlgorithm      // TEE key; zero → KeyEC256
	InitData         []byte            // exact initdata TOML bytes, sent as init-data when non-empty
	HTTPClient       *http.Client      // nil → NewHTTPClient()
	Logger           *slog.Logger      // nil → discard
	Now              func() time.Time  // nil → time.Now
	Rand             func() float64    // jitter source in [0,1); nil → math/rand/v2
	MaxResponseBytes int64             // cap on any KBS response body; zero → DefaultMaxResponseBytes
	HandshakeTimeout time.Duration     // budget of one shared handshake; zero → DefaultHandshakeTimeout
	// MaxRetries bounds retries of transient failures per call; zero →
	// DefaultMaxRetries, negative → none.
	MaxRetries int
	// DisableKeyPregeneration makes each handshake generate its key when it
	// starts instead of ahead of time (keys.go): for measuring the
	// difference; there is no reason to set it in production.
	DisableKeyPregeneration bool
	// Trace, when set, receives the duration of each step ("keygen", "auth",
	// "evidence", "attest", "resource", "decrypt"): for benchmarks and metrics.
	Trace func(step string, d time.Duration)
	// Measured, when set, says how far the runtime event log has grown.
	// A token attested before it grew lacks the newer events, which a
	// resource policy may ask for (an image pulled, …): a PolicyDeny on
	// such a token re-attests once, as guest-components re-attests on
	// any 401. Without it, PolicyDeny is final.
	Measured func() int64
}

// Stats are cumulative counters, for metrics and tests.
type Stats struct {
	Handshakes         uint64 // successful auth+attest rounds
	HandshakeErrors    uint64
	ResourceRequests   uint64 // resource and plugin GETs sent to the KBS
	Failovers          uint64 // moves away from an endpoint that stopped answering
	ProtocolMismatches uint64 // handshakes the KBS refused for our protocol version
	Endpoints          []EndpointStats
}

// EndpointStats are one KBS endpoint's counters.
type EndpointStats struct {
	URL             string // scheme://host[:port]
	Active          bool   // holds the current token, or is the one tried next
	Handshakes      uint64
	HandshakeErrors uint64
	Requests        uint64 // every request sent to it (auth, attest, resource, plugin)
}

// Client is safe for concurrent use.
type Client struct {
	cfg Config
	eps []*endpoint // in order of preference
	log *slog.Logger

	baseCtx context.Context // parent of shared handshakes; cancelled by Close
	cancel  context.CancelFunc
	running sync.WaitGroup // the handshake goroutines, which Close waits for
	closed  bool           // under mu: no handshake starts after Close
	nextKey *pendingKey    // under mu: the next handshake's key, being made or ready (keys.go)

	mu         sync.Mutex
	cur        *session
	flight     *handshakeFlight
	retryAfter time.Time // no background refresh before this (after a failure)

	lastFail   error     // the latest classified KBS failure, for LastFailure
	lastFailAt time.Time // when (local clock)

	handshakes, handshakeErrs, resourceReqs atomic.Uint64
	failovers, protocolMismatches           atomic.Uint64
}

type handshakeFlight struct {
	done chan struct{}
	s    *session
	err  error
}

// New validates cfg and returns a Client. It does no I/O: startup never waits
// for the KBS.
func New(cfg Config) (*Client, error) {
	if cfg.Attester == nil {
		return nil, errors.New("kbsclient: Attester is required")
	}
	eps, err := newEndpoints(append([]string{cfg.URL}, cfg.URLs...))
	if err != nil {
		return nil, fmt.Errorf("kbsclient: %w", err)
	}
	if cfg.KeyAlgorithm, err = ParseKeyAlgorithm(string(cfg.KeyAlgorithm)); err != nil {
		return nil, fmt.Errorf("kbsclient: %w", err)
	}
	if cfg.HTTPClient == nil {
		if cfg.HTTPClient, err = NewHTTPClient(); err != nil {
			return nil, err
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.FailbackAfter <= 0 {
		cfg.FailbackAfter = DefaultFailbackAfter
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = DefaultMaxRetries
	case cfg.MaxRetries < 0:
		cfg.MaxRetries = 0
	}
	c := &Client{cfg: cfg, eps: eps, log: cfg.Logger.With("component", "kbsclient")}
	for _, ep := range eps {
		if ep.base.Scheme == "http" && !isLoopbackHost(ep.base.Hostname()) {
			c.log.Warn("KBS URL uses plain HTTP to a non-loopback host; use https in production", "url", ep.name)
		}
	}
	c.baseCtx, c.cancel = context.WithCancel(context.Background())
	c.mu.Lock()
	c.prefetchKeyLocked() // the first handshake's key, before anyone asks
	c.mu.Unlock()
	return c, nil
}

// Close cancels any handshake still running in the background and waits
// for it to end.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.running.Wait()
}

// errClosed answers callers of a closed client.
var errClosed = errors.New("kbsclient: client closed")

// Stats returns the counters.
func (c *Client) Stats() Stats {
	st := Stats{Handshakes: c.handshakes.Load(), HandshakeErrors: c.handshakeErrs.Load(), ResourceRequests: c.resourceReqs.Load(),
		Failovers: c.failovers.Load(), ProtocolMismatches: c.protocolMismatches.Load()}
	c.mu.Lock()
	active := c.preferredLocked(c.cfg.Now())
	if c.cur != nil && c.cur.usable(c.cfg.Now()) {
		active = c.cur.ep
	}
	c.mu.Unlock()
	for _, ep := range c.eps {
		st.Endpoints = append(st.Endpoints, EndpointStats{URL: ep.name, Active: ep == active,
			Handshakes: ep.handshakes.Load(), HandshakeErrors: ep.handshakeErrs.Load(), Requests: ep.requests.Load()})
	}
	return st
}

// HasToken reports whether a usable token is held (for /readyz).
func (c *Client) HasToken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.usable(c.cfg.Now())
}

// TokenExpiry is when the held token expires (local clock), zero when none.
func (c *Client) TokenExpiry() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return time.Time{}
	}
	return c.cur.expires
}

// Resource fetches and decrypts one resource. Transient failures (KBS
// unreachable, 5xx, a failed handshake) are retried with capped, jittered
// exponential backoff, at most MaxRetries times and never past ctx: this is
// the one layer that retries. On a 401 that says the token is missing or bad
// it re-attests once. Every other failure is returned at once as a
// classified *Error (or the ctx error).
func (c *Client) Resource(ctx context.Context, p resource.Path) ([]byte, error) {
	if _, err := resource.New(p.Repo, p.Type, p.Tag); err != nil {
		return nil, err
	}
	return c.get(ctx, "resource", "resource/"+p.String(), requireJWE)
}

// Plugin calls a KBS plugin other than resource (GET /kbs/v0/<plugin>/…)
// with the same token, retries and failover as Resource. A JWE answer
// (Content-Type application/json, as Trustee sends for a plugin that
// encrypts) is decrypted; any other answer is returned as sent.
func (c *Client) Plugin(ctx context.Context, p resource.Plugin) ([]byte, error) {
	if _, err := resource.ParsePlugin(p.Name, pathEscape(p.Path), p.Query); err != nil {
		return nil, err
	}
	suffix := pathEscape(p.Name)
	if p.Path != "" {
		suffix += "/" + pathEscape(p.Path)
	}
	return c.get(ctx, "plugin", suffix+queryPart(p.Query), jweIfJSON)
}

func pathEscape(p string) string { return (&url.URL{Path: p}).EscapedPath() }

func queryPart(q string) string {
	if q == "" {
		return ""
	}
	return "?" + q
}

// get is the retry loop around one authorized GET: re-attest once on a
// token problem, move to the next endpoint at once when this one is
// unavailable, and otherwise back off between attempts. When ctx ends
// first, the answer is a *DeadlineError carrying the last KBS failure, so
// the outcome does not depend on whether the budget ran out during a
// backoff or during a request.
func (c *Client) get(ctx context.Context, op, suffix string, decode decodeFunc) ([]byte, error) {
	var stale *session
	var last error // the latest KBS failure of this call
	reattested := false
	switches := 0
	for attempt := 0; ; {
		plain, s, err := c.tryGet(ctx, op, suffix, stale, decode)
		if err == nil {
			return plain, nil
		}
		var kerr *Error
		if errors.As(err, &kerr) {
			last = err
			if !reattested && kerr.Status == http.StatusUnauthorized && isTokenProblem(kerr.KBSType) {
				c.log.Info("KBS rejected token; re-attesting once", "kbs", kerr.KBS, "kbs_error", kerr.KBSType)
				stale, reattested = s, true
				continue
			}
			if !reattested && kerr.KBSType == TypePolicyDeny && s != nil && c.measuredSince(s) {
				c.log.Info("KBS policy denied a token older than the latest runtime measurement; re-attesting once", "kbs", kerr.KBS)
				stale, reattested = s, true
				continue
			}
			if !transient(err) {
				return nil, err
			}
		}
		if ctx.Err() != nil {
			return nil, &DeadlineError{Err: ctx.Err(), Last: last}
		}
		if kerr == nil {
			return nil, err
		}
		if switches < len(c.eps)-1 && c.failedOver(kerr.KBS) {
			// Another endpoint is up: try it now, in the same budget.
			switches++
			continue
		}
		if attempt >= c.cfg.MaxRetries {
			return nil, err
		}
		d := backoff(attempt, c.cfg.Rand())
		attempt++
		c.log.Debug("transient KBS failure; retrying", "attempt", attempt, "backoff", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, &DeadlineError{Err: ctx.Err(), Last: last}
		}
	}
}

func (c *Client) tryGet(ctx context.Context, op, suffix string, stale *session, decode decodeFunc) ([]byte, *session, error) {
	s, err := c.session(ctx, stale)
	if err != nil {
		return nil, nil, err
	}
	plain, err := c.getWith(ctx, s, op, suffix, decode)
	return plain, s, err
}

// transient reports failures worth retrying: the KBS could not be reached
// or answered 5xx. Refusals, missing resources and garbage are final.
func transient(err error) bool {
	var kerr *Error
	return errors.As(err, &kerr) && kerr.Kind == Unavailable
}

// backoff is the delay before retry attempt+1: 100 ms doubling to a 2 s
// cap, with jitter r ∈ [0,1) spreading it over [d/2, d). Pure for tests.
func backoff(attempt int, r float64) time.Duration {
	d := min(100*time.Millisecond<<min(attempt, 5), 2*time.Second)
	return d/2 + time.Duration(r*float64(d/2))
}

// session returns a usable session, starting or joining a handshake when
// needed. stale, when set, is a session the KBS just rejected: it is dropped
// and never returned again. Callers leave on their own ctx; the handshake
// itself runs on the client's budget so one impatient caller cannot fail the
// others.
func (c *Client) session(ctx context.Context, stale *session) (*session, error) {
	c.mu.Lock()
	now := c.cfg.Now()
	if stale != nil && c.cur == stale {
		c.cur = nil
	}
	// A token is only good while its issuer answers: a session on an
	// endpoint that just failed is not used.
	if s := c.cur; s.usable(now) && !s.ep.isDown(now) {
		// Proactive refresh, or a move back to a preferred endpoint that
		// is up again: in the background, still serving s.
		moveBack := c.preferredLocked(now) != s.ep
		if (s.needsRefresh(now) || moveBack) && c.flight == nil && !now.Before(c.retryAfter) {
			c.startHandshakeLocked()
		} else if s.pastHalfLife(now) {
			c.prefetchKeyLocked()
		}
		c.mu.Unlock()
		return s, nil
	}
	f := c.flight
	if f == nil {
		f = c.startHandshakeLocked()
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.s, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Client) startHandshakeLocked() *handshakeFlight {
	f := &handshakeFlight{done: make(chan struct{})}
	if c.closed {
		f.err = errClosed
		close(f.done)
		return f
	}
	c.flight = f
	ep := c.preferredLocked(c.cfg.Now())
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		ctx, cancel := context.WithTimeout(c.baseCtx, c.cfg.HandshakeTimeout)
		s, err := c.handshake(ctx, ep)
		cancel()
		c.mu.Lock()
		if err == nil {
			c.cur = s
			c.handshakes.Add(1)
			ep.handshakes.Add(1)
		} else {
			c.handshakeErrs.Add(1)
			ep.handshakeErrs.Add(1)
			c.retryAfter = c.cfg.Now().Add(refreshRetryDelay)
		}
		c.flight = nil
		if err != nil {
			c.prefetchKeyLocked() // for the retry; after a success, at half the token's life
		}
		c.mu.Unlock()
		var kerr *Error
		switch {
		case errors.As(err, &kerr) && kerr.Kind == ProtocolMismatch:
			c.protocolMismatches.Add(1)
			c.log.Error("KBS protocol version mismatch", "kbs", ep.name, "ours", ProtocolVersion, "kbs_answer", kerr.KBSDetail)
		case err != nil:
			c.log.Warn("attestation failed", "kbs", ep.name, "err", err)
		default:
			c.log.Info("attested", "kbs", ep.name, "tee", c.cfg.Attester.Tee(), "token_lifetime", s.expires.Sub(s.obtained).Round(time.Second))
		}
		f.s, f.err = s, err
		close(f.done)
	}()
	return f
}

// handshake runs one RCAR round with a fresh key pair and a fresh cookie jar
// (parallel handshakes sharing a jar would overwrite each other's session).
func (c *Client) handshake(ctx context.Context, ep *endpoint) (*session, error) {
	done := c.step("keygen") // near zero when the key was made ahead of time
	key, err := c.takeKey(ctx)
	done()
	if err != nil {
		return nil, &Error{Kind: AttestationFailed, Op: "keygen", Err: err}
	}
	jar, _ := cookiejar.New(nil) // never fails with nil options
	hc := *c.cfg.HTTPClient
	hc.Jar = jar

	// auth
	body, _ := json.Marshal(authRequest{Version: ProtocolVersion, Tee: c.cfg.Attester.Tee(), ExtraParams: supportedHashesJSON})
	done = c.step("auth")
	respBody, err := c.post(ctx, &hc, ep, "auth", body)
	done()
	if err != nil {
		return nil, err
	}
	var ch challenge
	if err := json.Unmarshal(respBody, &ch); err != nil || ch.Nonce == "" {
		return nil, &Error{Kind: BadResponse, Op: "auth", Msg: "challenge is not {\"nonce\":…}", Err: err}
	}
	h, err := selectedHash(ch.ExtraParams)
	if err != nil {
		return nil, &Error{Kind: BadResponse, Op: "auth", Msg: "challenge extra-params", Err: err}
	}

	// evidence bound to nonce and key; the event log is read no earlier
	// than this, so an event recorded from here on counts as newer
	measured := c.measured()
	const additional = "" // no additional devices
	rd, err := ReportData(h, ch.Nonce, key.jwk, additional)
	if err != nil {
		return nil, &Error{Kind: AttestationFailed, Op: "evidence", Err: err}
	}
	done = c.step("evidence")
	ev, err := c.cfg.Attester.Evidence(ctx, rd)
	done()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &Error{Kind: AttestationFailed, Op: "evidence", Err: err}
	}
	jwk, _ := json.Marshal(key.jwk)
	req := attestRequest{
		RuntimeData: runtimeData{Nonce: ch.Nonce, TeePubKey: jwk},
		TeeEvidence: teeEvidence{PrimaryEvidence: ev, AdditionalEvidence: additional},
	}
	if len(c.cfg.InitData) > 0 {
		req.InitData = &initData{Format: "toml", Body: string(c.cfg.InitData)}
	}
	body, err = json.Marshal(req)
	if err != nil {
		return nil, &Error{Kind: AttestationFailed, Op: "attest", Msg: "encode request", Err: err}
	}
	done = c.step("attest")
	respBody, err = c.post(ctx, &hc, ep, "attest", body)
	done()
	if err != nil {
		return nil, err
	}
	var ar attestResponse
	if err := json.Unmarshal(respBody, &ar); err != nil || ar.Token == "" {
		return nil, &Error{Kind: BadResponse, Op: "attest", Msg: "response is not {\"token\":…}", Err: err}
	}
	now := c.cfg.Now()
	life, err := tokenLifetime(ar.Token, now)
	if err != nil {
		return nil, &Error{Kind: BadResponse, Op: "attest", Err: err}
	}
	return &session{
		ep:        ep,
		token:     ar.Token,
		key:       key,
		obtained:  now,
		expires:   now.Add(life),
		refreshAt: refreshPoint(now, life, c.cfg.Rand()),
		measured:  measured,
	}, nil
}

func (c *Client) measured() int64 {
	if c.cfg.Measured == nil {
		return 0
	}
	return c.cfg.Measured()
}

// measuredSince reports runtime measurements newer than s's attestation.
func (c *Client) measuredSince(s *session) bool {
	return c.cfg.Measured != nil && c.cfg.Measured() != s.measured
}

func (c *Client) post(ctx context.Context, hc *http.Client, ep *endpoint, op string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.url(op), bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Kind: Unavailable, Op: op, KBS: ep.name, Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	body, _, err = c.do(ctx, hc, ep, req, op)
	return body, err
}

// decodeFunc turns a 200 answer into plaintext with the session's key.
type decodeFunc func(s *session, body []byte, contentType string) ([]byte, error)

// requireJWE: a resource is always a JWE to our key.
func requireJWE(s *session, body []byte, _ string) ([]byte, error) {
	plain, err := s.key.decrypt(body)
	if err != nil {
		return nil, &Error{Kind: BadResponse, Op: "decrypt", KBS: s.ep.name, Msg: "resource is not a JWE for our key", Err: err}
	}
	return plain, nil
}

// jweIfJSON: Trustee sends a plugin's answer as a JWE with Content-Type
// application/json when the plugin encrypts, else as plain bytes (with
// text/xml, whatever they are).
func jweIfJSON(s *session, body []byte, contentType string) ([]byte, error) {
	if mt, _, _ := mime.ParseMediaType(contentType); mt != "application/json" {
		return body, nil
	}
	plain, err := s.key.decrypt(body)
	if err != nil {
		return nil, &Error{Kind: BadResponse, Op: "decrypt", KBS: s.ep.name, Msg: "plugin answered JSON that is not a JWE for our key", Err: err}
	}
	return plain, nil
}

func (c *Client) getWith(ctx context.Context, s *session, op, suffix string, decode decodeFunc) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.ep.url(suffix), nil)
	if err != nil {
		return nil, &Error{Kind: BadResponse, Op: op, KBS: s.ep.name, Msg: "building the request", Err: err}
	}
	// Bearer rather than the cookie: it decouples us from the 5-minute
	// session (spec "Session"). The token goes only to the KBS that issued it.
	req.Header.Set("Authorization", "Bearer "+s.token)
	c.resourceReqs.Add(1)
	done := c.step(op)
	body, ctype, err := c.do(ctx, c.cfg.HTTPClient, s.ep, req, op)
	done()
	if err != nil {
		return nil, err
	}
	done = c.step("decrypt")
	plain, err := decode(s, body, ctype)
	done()
	return plain, err
}

// step starts timing one step for Trace; the returned func ends it.
func (c *Client) step(name string) func() {
	if c.cfg.Trace == nil {
		return func() {}
	}
	start := time.Now()
	return func() { c.cfg.Trace(name, time.Since(start)) }
}

// do sends req to ep and returns the 200 body and its Content-Type, or a
// classified error naming ep. An Unavailable answer marks ep down.
func (c *Client) do(ctx context.Context, hc *http.Client, ep *endpoint, req *http.Request, op string) ([]byte, string, error) {
	ep.requests.Add(1)
	body, ctype, err := c.roundTrip(ctx, hc, req, op)
	var kerr *Error
	switch {
	case errors.As(err, &kerr):
		kerr.KBS = ep.name
		c.mu.Lock()
		c.lastFail, c.lastFailAt = err, c.cfg.Now()
		c.mu.Unlock()
		if kerr.Kind == Unavailable {
			c.markDown(ep, err)
		} else {
			c.markUp(ep) // it answered, if with a refusal
		}
	case err == nil:
		c.markUp(ep)
	}
	return body, ctype, err
}

// LastFailure returns the latest classified KBS failure if it happened at
// or after since, else nil. A caller that stopped waiting for a shared
// fetch uses it to say why its budget ran out.
func (c *Client) LastFailure(since time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastFail == nil || c.lastFailAt.Before(since) {
		return nil
	}
	return c.lastFail
}

func (c *Client) roundTrip(ctx context.Context, hc *http.Client, req *http.Request, op string) ([]byte, string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		return nil, "", &Error{Kind: Unavailable, Op: op, Err: scrubURLError(err)}
	}
	defer resp.Body.Close()
	body, err := readCapped(resp.Body, c.cfg.MaxResponseBytes)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		kind := Unavailable
		if errors.Is(err, errTooLarge) {
			kind = BadResponse
		}
		return nil, "", &Error{Kind: kind, Op: op, Status: resp.StatusCode, Msg: "reading body", Err: err}
	}
	if resp.StatusCode == http.StatusOK {
		return body, resp.Header.Get("Content-Type"), nil
	}
	return nil, "", classify(op, resp.StatusCode, body)
}

var errTooLarge = errors.New("response body exceeds size limit")

func readCapped(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w (%d bytes)", errTooLarge, max)
	}
	return b, nil
}

// classify turns a non-200 KBS answer into an *Error (spec "Errors": 404
// only for bad paths and unknown plugins, everything else 401 with a type).
func classify(op string, status int, body []byte) error {
	e := &Error{Op: op, Status: status}
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil && strings.HasPrefix(eb.Type, errTypePrefix) {
		e.KBSType = strings.TrimPrefix(eb.Type, errTypePrefix)
		e.KBSDetail = sanitize(eb.Detail)
	}
	switch {
	case status >= 500:
		e.Kind, e.Msg = Unavailable, "KBS server error"
	case e.KBSType == TypePolicyDeny:
		e.Kind, e.Msg = Denied, "access denied by the KBS resource policy"
	case e.KBSType == TypePluginInternal && op == "plugin":
		e.Kind, e.Msg = NotFound, "the plugin failed or has no such item (the KBS does not tell them apart)"
	case e.KBSType == TypePluginInternal:
		// The KBS answers a missing resource and a storage failure alike.
		e.Kind, e.Msg = NotFound, "resource not found (or a KBS storage error: the KBS does not tell them apart)"
	case e.KBSType == TypePluginNotFound:
		e.Kind, e.Msg = PluginNotFound, "the KBS has no such plugin (not enabled in its [[plugins]])"
	case e.KBSType == TypeInvalidPath:
		e.Kind, e.Msg = NotFound, "the KBS has no such endpoint"
	case op == "auth" && e.KBSType == TypeAttestation && strings.Contains(strings.ToLower(e.KBSDetail), "version mismatch"):
		e.Kind, e.Msg = ProtocolMismatch, fmt.Sprintf("cdh-proxy speaks KBS protocol %s; the KBS answered %q", ProtocolVersion, e.KBSDetail)
	case op == "auth" || op == "attest":
		e.Kind, e.Msg = AttestationFailed, "attestation refused by the KBS"
	case isTokenProblem(e.KBSType):
		e.Kind, e.Msg = AttestationFailed, "the KBS rejected a fresh token"
	case e.KBSType == TypeJWE:
		e.Kind, e.Msg = BadResponse, "the KBS could not encrypt to our TEE key"
	case e.KBSType == "":
		e.Kind, e.Msg = BadResponse, fmt.Sprintf("unexpected answer (%d bytes, not a KBS error body)", len(body))
	default:
		e.Kind, e.Msg = BadResponse, "unexpected KBS error"
	}
	return e
}

// sanitize bounds and de-controls text from the KBS before it reaches our
// logs and error bodies.
func sanitize(s string) string {
	const max = 512
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// scrubURLError drops the URL from a *url.Error: it carries no secret today,
// but resource URLs name what a workload asked for and logs do not need them twice.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Attest makes sure a token is held, running (or joining) a handshake if
// not. serve calls it in the background at startup so the first request does
// not pay for attestation; it never blocks startup.
func (c *Client) Attest(ctx context.Context) error {
	_, err := c.session(ctx, nil)
	return err
}

// Token returns a usable KBS token and the PEM private key of the TEE key it
// was issued for, attesting first if needed: what AA's GetToken("kbs")
// returns. Both are secrets; callers hand them only to local clients.
func (c *Client) Token(ctx context.Context) (token string, keyPEM []byte, err error) {
	s, err := c.session(ctx, nil)
	if err != nil {
		return "", nil, err
	}
	keyPEM, err = s.key.privatePEM()
	if err != nil {
		return "", nil, err
	}
	return s.token, keyPEM, nil
}
