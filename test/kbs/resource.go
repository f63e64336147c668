package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

var segmentRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]*$`)

// Policy is the resource policy. The zero value allows every resource to
// every tee.
type Policy struct {
	// DenySample denies sample evidence, as Trustee's default policy does.
	DenySample bool
	// Allow, when non-empty, lists path.Match patterns over "repo/type/tag"; others are denied.
	Allow []string
	// DenyPlugins names plugins (other than resource) the policy denies.
	DenyPlugins []string
	// RequireEvent, when set, releases resources only to a guest whose
	// attestation showed this runtime event, as a Rego rule over
	// tdx.uefi_event_logs would.
	RequireEvent *EventRule
}

// EventRule matches an AAEL event in the claims: its domain and
// operation, the given fields of its JSON content, and a digest that
// matches the event (Trustee only reports that; a policy must ask).
type EventRule struct {
	Domain, Operation string
	Content           map[string]string
}

func (r *EventRule) matches(events []ccEvent) bool {
	for _, e := range events {
		data, _ := e.Details["data"].(map[string]any)
		if !e.DigestMatchesEvent || data == nil || data["domain"] != r.Domain || data["operation"] != r.Operation {
			continue
		}
		content, _ := data["content"].(map[string]any)
		ok := true
		for k, v := range r.Content {
			ok = ok && content[k] == v
		}
		if ok {
			return true
		}
	}
	return false
}

// allowsPlugin is the policy for plugins other than resource; Trustee's
// policy input names the plugin as data.plugin.
func (p Policy) allowsPlugin(tee, plugin string) bool {
	if p.DenySample && tee == "sample" {
		return false
	}
	return !slices.Contains(p.DenyPlugins, plugin)
}

func (p Policy) allows(g grant, res string) bool {
	if p.DenySample && g.tee == "sample" {
		return false
	}
	if p.RequireEvent != nil && !p.RequireEvent.matches(g.events) {
		return false
	}
	if len(p.Allow) == 0 {
		return true
	}
	for _, pat := range p.Allow {
		if ok, _ := path.Match(pat, res); ok {
			return true
		}
	}
	return false
}

// bearer returns the Authorization Bearer token, if any.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	return tok, ok && tok != ""
}

// authorize checks the token as Trustee does before any plugin runs:
// Bearer header, else the cookie of an attested session. It answers the
// 401 itself when there is none or it does not verify.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (g grant, ok bool) {
	raw, ok := bearer(r)
	if !ok {
		if _, sess := s.sessionFrom(r); sess != nil {
			s.mu.Lock()
			raw, ok = sess.token, sess.attested
			s.mu.Unlock()
		}
	}
	if !ok {
		writeError(w, http.StatusUnauthorized, "TokenNotFound", "Attestation Token not found")
		return grant{}, false
	}
	g, err := s.verifyToken(raw)
	if err != nil {
		s.log.Info("token rejected", "err", err)
		writeError(w, http.StatusUnauthorized, "TokenVerifierError", "Token Verifier error")
		return grant{}, false
	}
	return g, true
}

func (s *Server) handleGetResource(w http.ResponseWriter, r *http.Request, escaped string) {
	g, ok := s.authorize(w, r)
	if !ok {
		return
	}
	jwk := g.jwk
	s.mu.Lock()
	pol := s.policy
	s.mu.Unlock()
	if unescaped, _ := url.PathUnescape(escaped); !pol.allows(g, unescaped) {
		writeError(w, http.StatusUnauthorized, "PolicyDeny", "Access denied by policy")
		return
	}
	// Bad paths surface only now, and as PluginInternalError (spec "Endpoints").
	segs, ok := parsePath(escaped)
	if !ok {
		writeError(w, http.StatusUnauthorized, "PluginInternalError", "Plugin internal error")
		return
	}
	data, err := s.cfg.Store.Read(segs[0], segs[1], segs[2])
	if err != nil {
		s.log.Info("resource read failed", "resource", strings.Join(segs, "/"), "err", err)
		writeError(w, http.StatusUnauthorized, "PluginInternalError", "Plugin internal error")
		return
	}
	f := s.protocolFaults()
	if f.ForeignKeyJWE {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		enc := base64.RawURLEncoding.EncodeToString
		jwk = map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
			"x": enc(other.X.FillBytes(make([]byte, 32))), "y": enc(other.Y.FillBytes(make([]byte, 32)))}
	}
	body, err := encryptTo(jwk, data)
	if err == nil && f.TamperJWE {
		body = tamper(body)
	}
	if err != nil {
		s.log.Info("JWE failed", "err", err)
		writeError(w, http.StatusUnauthorized, "JweError", "JWE failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

func (s *Server) handlePutResource(w http.ResponseWriter, r *http.Request, escaped string) {
	raw, ok := bearer(r)
	if !ok || s.cfg.AdminToken == "" || raw != s.cfg.AdminToken {
		writeError(w, http.StatusUnauthorized, "AdminAuth", "Admin auth error")
		return
	}
	segs, ok := parsePath(escaped)
	if !ok {
		writeError(w, http.StatusNotFound, "InvalidRequestPath", "Invalid Request Path")
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", "body too large or unreadable")
		return
	}
	if err := s.cfg.Store.Write(segs[0], segs[1], segs[2], data); err != nil {
		writeError(w, http.StatusUnauthorized, "PluginInternalError", "Plugin internal error")
		return
	}
	w.WriteHeader(http.StatusOK)
}

// parsePath unescapes and checks "repo/type/tag" with the KBS segment rule.
func parsePath(escaped string) (segs []string, ok bool) {
	unescaped, err := url.PathUnescape(escaped)
	if err != nil {
		return nil, false
	}
	segs = strings.Split(unescaped, "/")
	if len(segs) != 3 {
		return nil, false
	}
	for _, seg := range segs {
		if !segmentRE.MatchString(seg) {
			return nil, false
		}
	}
	return segs, true
}

// encryptTo builds the flattened JWE JSON the KBS returns: ECDH-ES+A256KW or
// RSA-OAEP-256/RSA1_5, always A256GCM. JWK values must be unpadded base64url,
// or this fails as Trustee does, with JweError.
func encryptTo(jwk map[string]string, plain []byte) ([]byte, error) {
	dec := func(name string) ([]byte, error) {
		b, err := base64.RawURLEncoding.DecodeString(jwk[name])
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("JWK member %q is not unpadded base64url", name)
		}
		return b, nil
	}
	var rcpt jose.Recipient
	switch jwk["kty"] {
	case "EC":
		var curve elliptic.Curve
		switch jwk["crv"] {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return nil, fmt.Errorf("unsupported curve %q", jwk["crv"])
		}
		if jwk["alg"] != string(jose.ECDH_ES_A256KW) {
			return nil, fmt.Errorf("unsupported EC alg %q", jwk["alg"])
		}
		x, err := dec("x")
		if err != nil {
			return nil, err
		}
		y, err := dec("y")
		if err != nil {
			return nil, err
		}
		pub := &ecdsa.PublicKey{Curve: curve, X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		if !curve.IsOnCurve(pub.X, pub.Y) {
			return nil, errors.New("EC point not on curve")
		}
		rcpt = jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: pub}
	case "RSA":
		alg := jose.KeyAlgorithm(jwk["alg"])
		if alg != jose.RSA_OAEP_256 && alg != jose.RSA1_5 {
			return nil, fmt.Errorf("unsupported RSA alg %q", jwk["alg"])
		}
		n, err := dec("n")
		if err != nil {
			return nil, err
		}
		e, err := dec("e")
		if err != nil {
			return nil, err
		}
		rcpt = jose.Recipient{Algorithm: alg, Key: &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}}
	default:
		return nil, fmt.Errorf("unsupported kty %q", jwk["kty"])
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, rcpt, nil)
	if err != nil {
		return nil, err
	}
	obj, err := enc.Encrypt(plain)
	if err != nil {
		return nil, err
	}
	return []byte(obj.FullSerialize()), nil
}

// tamper flips one bit in the JWE ciphertext, keeping the JSON valid.
func tamper(body []byte) []byte {
	var m map[string]string
	if json.Unmarshal(body, &m) != nil {
		return body
	}
	ct, err := base64.RawURLEncoding.DecodeString(m["ciphertext"])
	if err != nil || len(ct) == 0 {
		return body
	}
	ct[0] ^= 1
	m["ciphertext"] = base64.RawURLEncoding.EncodeToString(ct)
	out, _ := json.Marshal(m)
	return out
}
