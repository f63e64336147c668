// Package kbs is a strict Go emulation of the Trustee KBS wire behaviour
// (../shared/spec/kbs-protocol.md) for tests and the demo: exact version
// check, cookie sessions with expiry, nonce check, a recomputed report_data
// binding, an ES256 token with exp and the tee-pubkey claim, Bearer and cookie
// auth, JWE to the token's key, and Trustee's 401/404 rules and error bodies.
// It is deliberately independent of package kbsclient (it shares no code with
// it), so a client bug cannot hide behind a matching server bug.
package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-sev-guest/verify/trust"
)

// Defaults, as Trustee's.
const (
	DefaultTokenLifetime   = 5 * time.Minute
	DefaultSessionLifetime = 5 * time.Minute
	tokenLeeway            = 60 * time.Second
	maxRequestBody         = 4 << 20
)

// Config configures a Server.
type Config struct {
	// Store serves resource bytes. Required.
	Store Store
	// Policy decides resource access; the zero value allows everything.
	Policy Policy
	// TokenLifetime of issued tokens; zero → DefaultTokenLifetime.
	TokenLifetime time.Duration
	// SessionLifetime of auth sessions; zero → DefaultSessionLifetime.
	SessionLifetime time.Duration
	// AdminToken enables POST resource/… with "Authorization: Bearer <AdminToken>".
	AdminToken string
	// ProtocolVersion is the one KBS protocol version accepted at auth;
	// "" → "0.4.0" (Trustee's). Another value plays a newer or older KBS.
	ProtocolVersion string
	// Plugins are served besides resource (see DefaultPlugins); others
	// answer 404 PluginNotFound.
	Plugins map[string]Plugin
	// SNPRoots are the trusted AMD roots per product line; nil refuses snp evidence.
	SNPRoots map[string][]*trust.AMDRootCerts
	// TDXRoots are the trusted Intel SGX roots; nil refuses tdx evidence.
	TDXRoots *x509.CertPool
	Logger   *slog.Logger     // nil → discard
	Now      func() time.Time // nil → time.Now
}

// Counts are the numbers of requests that reached each endpoint.
type Counts struct {
	Auth, Attest, Resource uint64
	// Plugin counts GETs to plugins other than resource.
	Plugin uint64
	// Handshakes counts successful attestations (tokens issued).
	Handshakes uint64
	// ServerTime is the total time spent inside the KBS handlers, for
	// separating client overhead from server work in benchmarks.
	ServerTime time.Duration
}

// Server is an http.Handler. Knobs may be changed while it serves.
type Server struct {
	cfg     Config
	log     *slog.Logger
	signKey *ecdsa.PrivateKey

	mu       sync.Mutex
	sessions map[string]*session
	policy   Policy
	tokenTTL time.Duration
	faults   Faults

	auth, attest, res, plugin, handshakes atomic.Uint64
	serverNanos                           atomic.Int64
}

type session struct {
	tee      string
	nonce    string
	expires  time.Time
	attested bool
	token    string
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("kbs: Store is required")
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}
	if cfg.ProtocolVersion == "" {
		cfg.ProtocolVersion = "0.4.0"
	}
	if cfg.SessionLifetime <= 0 {
		cfg.SessionLifetime = DefaultSessionLifetime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "testkbs"), signKey: k,
		sessions: map[string]*session{}, policy: cfg.Policy, tokenTTL: cfg.TokenLifetime,
	}, nil
}

// Counts returns the request counters.
func (s *Server) Counts() Counts {
	return Counts{Auth: s.auth.Load(), Attest: s.attest.Load(), Resource: s.res.Load(), Plugin: s.plugin.Load(), Handshakes: s.handshakes.Load(),
		ServerTime: time.Duration(s.serverNanos.Load())}
}

// SetTokenLifetime changes the lifetime of tokens issued from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	s.tokenTTL = d
	s.mu.Unlock()
}

// SetPolicy replaces the resource policy.
func (s *Server) SetPolicy(p Policy) {
	s.mu.Lock()
	s.policy = p
	s.mu.Unlock()
}

// ServeHTTP routes /kbs/v0/<plugin>/… as the KBS does: unknown plugins, and
// wrong methods on auth/attest, are 404 PluginNotFound.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/kbs/v0/")
	if !ok {
		writeError(w, http.StatusNotFound, "InvalidRequestPath", "Invalid Request Path")
		return
	}
	plugin, sub, _ := strings.Cut(rest, "/")
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	start := time.Now()
	defer func() { s.serverNanos.Add(int64(time.Since(start))) }()
	switch {
	case plugin == "auth" && sub == "" && r.Method == http.MethodPost:
		s.auth.Add(1)
		if s.inject(w, r, EndpointAuth) {
			return
		}
		s.handleAuth(w, r)
	case plugin == "attest" && sub == "" && r.Method == http.MethodPost:
		s.attest.Add(1)
		if s.inject(w, r, EndpointAttest) {
			return
		}
		s.handleAttest(w, r)
	case plugin == "resource" && r.Method == http.MethodGet:
		s.res.Add(1)
		if s.inject(w, r, EndpointResource) {
			return
		}
		s.handleGetResource(w, r, sub)
	case plugin == "resource" && r.Method == http.MethodPost:
		s.handlePutResource(w, r, sub)
	case s.cfg.Plugins[plugin].Handle != nil && r.Method == http.MethodGet:
		s.plugin.Add(1)
		if s.inject(w, r, EndpointPlugin) {
			return
		}
		s.handlePlugin(w, r, plugin, s.cfg.Plugins[plugin], sub)
	default:
		writeError(w, http.StatusNotFound, "PluginNotFound", "Plugin "+plugin+" not found")
	}
}

// writeError writes a Trustee error body. Trustee sends it with no
// Content-Type; net/http would sniff one, so the header is suppressed.
func writeError(w http.ResponseWriter, status int, variant, detail string) {
	w.Header()["Content-Type"] = nil
	w.WriteHeader(status)
	body, _ := jsonMarshal(map[string]string{
		"type":   "https://github.com/confidential-containers/kbs/errors/" + variant,
		"detail": detail,
	})
	_, _ = w.Write(body)
}
