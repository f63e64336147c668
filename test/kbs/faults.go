package kbs

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Endpoint names a KBS endpoint for fault injection.
type Endpoint string

// Endpoints that faults can target.
const (
	EndpointAuth     Endpoint = "auth"
	EndpointAttest   Endpoint = "attest"
	EndpointResource Endpoint = "resource"
	EndpointPlugin   Endpoint = "plugin" // every plugin other than resource
)

// Faults are test knobs. The zero value injects nothing.
type Faults struct {
	// Delay is added before every answer of a targeted endpoint (all when Only is empty).
	Delay time.Duration
	// Status, when non-zero, replaces the answer with this status and a Trustee-style error body.
	Status int
	// Body, when non-nil, replaces the answer with 200 and these bytes.
	Body []byte
	// Only restricts the faults to these endpoints; empty means all.
	Only []Endpoint
	// Times, when > 0, applies the faults to that many requests only.
	Times int
	// PathContains, when set, restricts the faults to request paths containing it.
	PathContains string
	// Type is the error variant sent with Status (default "InjectedFault"),
	// e.g. "TokenVerifierError" for a 401 storm.
	Type string
	// ResetMidBody answers 200 with a Content-Length, half a body, then
	// closes the connection.
	ResetMidBody bool

	// Protocol faults, applied by the handlers themselves:
	TamperJWE     bool // flip a ciphertext byte of every resource JWE
	ForeignKeyJWE bool // encrypt resources to a key that is not the token's
	WrongNonce    bool // the challenge carries a nonce other than the session's
	ClockSkew     time.Duration
	// Evidence, when set, rewrites the primary evidence before it is
	// verified: a man in the middle, or a guest lying about its TEE.
	Evidence func(tee string, primary []byte) []byte
}

// SetFaults replaces the fault knobs.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// inject applies the faults for ep; it reports whether it answered.
func (s *Server) inject(w http.ResponseWriter, r *http.Request, ep Endpoint) bool {
	s.mu.Lock()
	f := s.faults
	targeted := (len(f.Only) == 0 || slices.Contains(f.Only, ep)) &&
		(f.PathContains == "" || strings.Contains(r.URL.Path, f.PathContains))
	if targeted && f.Times > 0 {
		s.faults.Times--
		if s.faults.Times == 0 {
			s.faults = Faults{} // used up
		}
	}
	s.mu.Unlock()
	if !targeted {
		return false
	}
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return true
		}
	}
	switch {
	case f.ResetMidBody:
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"protected":"`))
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
			}
		}
		return true
	case f.Status != 0:
		writeError(w, f.Status, cmp.Or(f.Type, "InjectedFault"), "injected fault")
		return true
	case f.Body != nil:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(f.Body)
		return true
	}
	return false
}

// protocolFaults returns the handler-level fault knobs.
func (s *Server) protocolFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}
