package kbs

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/pelletier/go-toml/v2"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
)

const cookieName = "kbs-session-id"

// knownTees are kbs-types' Tee variants; anything else fails the auth parse.
var knownTees = map[string]bool{
	"sample": true, "sampledevice": true, "tdx": true, "snp": true, "az-snp-vtpm": true,
	"az-tdx-vtpm": true, "sgx": true, "cca": true, "csv": true, "se": true, "tpm": true,
	"nvidia": true, "hygondcu": true, "nvidia-dpu": true,
}

func jsonMarshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func authFailed(w http.ResponseWriter, reason string) {
	writeError(w, http.StatusUnauthorized, "AttestationError", "Attestation error: RCAR handshake Auth failed: "+reason)
}

func attestFailed(w http.ResponseWriter, reason string) {
	writeError(w, http.StatusUnauthorized, "AttestationError", "Attestation error: RCAR handshake Attest failed: "+reason)
}

func (s *Server) handleAuth(w http.ResponseWriter, r *http.Request) {
	// Required members are checked by presence, as serde does for non-Option fields.
	var req map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		authFailed(w, "invalid request body: "+err.Error())
		return
	}
	var version, tee string
	if err := json.Unmarshal(req["version"], &version); err != nil {
		authFailed(w, "missing field `version`")
		return
	}
	if want := s.cfg.ProtocolVersion; version != want {
		authFailed(w, "KBS Client Protocol Version Mismatch: expect ="+want+" while the request is "+version)
		return
	}
	if err := json.Unmarshal(req["tee"], &tee); err != nil || !knownTees[tee] {
		authFailed(w, "unknown tee")
		return
	}
	if _, ok := req["extra-params"]; !ok {
		authFailed(w, "missing field `extra-params`")
		return
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	nonce := base64.StdEncoding.EncodeToString(raw[:])
	var id [16]byte
	_, _ = rand.Read(id[:])
	sid := hex.EncodeToString(id[:])
	now := s.cfg.Now()
	s.mu.Lock()
	for k, v := range s.sessions { // lazy expiry sweep
		if now.After(v.expires) {
			delete(s.sessions, k)
		}
	}
	exp := now.Add(s.cfg.SessionLifetime)
	s.sessions[sid] = &session{tee: tee, nonce: nonce, expires: exp}
	s.mu.Unlock()
	// Expires only, no Path: as Trustee's actix cookie.
	w.Header().Add("Set-Cookie", cookieName+"="+sid+"; Expires="+exp.UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "application/json")
	sent := nonce
	if s.protocolFaults().WrongNonce {
		_, _ = rand.Read(raw[:])
		sent = base64.StdEncoding.EncodeToString(raw[:])
	}
	body, _ := jsonMarshal(map[string]string{"nonce": sent, "extra-params": ""})
	_, _ = w.Write(body)
}

// attestation mirrors kbs-types' Attestation: required members only checked for presence.
type attestation struct {
	RuntimeData *struct {
		Nonce     *string         `json:"nonce"`
		TeePubKey json.RawMessage `json:"tee-pubkey"`
	} `json:"runtime-data"`
	TeeEvidence *struct {
		Primary    json.RawMessage `json:"primary_evidence"`
		Additional *string         `json:"additional_evidence"`
	} `json:"tee-evidence"`
	InitData *struct {
		Format string `json:"format"`
		Body   string `json:"body"`
	} `json:"init-data"`
}

func (s *Server) sessionFrom(r *http.Request) (string, *session) {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return "", nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[c.Value]
	if sess == nil || s.cfg.Now().After(sess.expires) {
		return "", nil
	}
	return c.Value, sess
}

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	sid, sess := s.sessionFrom(r)
	if sess == nil {
		attestFailed(w, "session not found or expired (missing kbs-session-id cookie?)")
		return
	}
	s.mu.Lock()
	attested, token := sess.attested, sess.token
	s.mu.Unlock()
	if attested { // Trustee returns the stored token for an attested session
		s.writeToken(w, sid, sess, token)
		return
	}
	var a attestation
	if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
		attestFailed(w, "invalid attestation body: "+err.Error())
		return
	}
	if a.RuntimeData == nil || a.RuntimeData.Nonce == nil || a.TeeEvidence == nil || a.TeeEvidence.Additional == nil || len(a.TeeEvidence.Primary) == 0 {
		attestFailed(w, "attestation body misses runtime-data.nonce, tee-evidence.primary_evidence or tee-evidence.additional_evidence")
		return
	}
	if *a.RuntimeData.Nonce != sess.nonce {
		attestFailed(w, "nonce mismatch")
		return
	}
	jwk, err := parseTeePubKey(a.RuntimeData.TeePubKey)
	if err != nil {
		attestFailed(w, "tee-pubkey: "+err.Error())
		return
	}
	var initDigest []byte
	if a.InitData != nil {
		if a.InitData.Format != "toml" {
			attestFailed(w, "init-data format must be toml")
			return
		}
		if initDigest, err = initDataDigest(a.InitData.Body); err != nil {
			attestFailed(w, "init-data: "+err.Error())
			return
		}
	}
	digest, err := bindingDigest(sess.nonce, jwk, *a.TeeEvidence.Additional)
	if err != nil {
		attestFailed(w, err.Error())
		return
	}
	primary := a.TeeEvidence.Primary
	s.mu.Lock()
	mutate := s.faults.Evidence
	s.mu.Unlock()
	if mutate != nil {
		primary = mutate(sess.tee, primary)
	}
	claims, err := s.verifyEvidence(sess.tee, primary, digest, initDigest)
	if err != nil {
		s.log.Info("evidence rejected", "tee", sess.tee, "err", err)
		attestFailed(w, "evidence verification failed: "+err.Error())
		return
	}
	token, err = s.issueToken(sess.tee, jwk, claims)
	if err != nil {
		attestFailed(w, err.Error())
		return
	}
	s.mu.Lock()
	sess.attested, sess.token = true, token
	s.mu.Unlock()
	s.handshakes.Add(1)
	s.writeToken(w, sid, sess, token)
}

func (s *Server) writeToken(w http.ResponseWriter, sid string, sess *session, token string) {
	w.Header().Add("Set-Cookie", cookieName+"="+sid+"; Expires="+sess.expires.UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "application/json")
	body, _ := jsonMarshal(map[string]string{"token": token})
	_, _ = w.Write(body)
}

// parseTeePubKey parses the JWK into the typed key Trustee uses and returns
// it re-serialized: exactly the typed members, whatever else was sent. That
// is how an extra member (use, kid) silently breaks the binding upstream.
func parseTeePubKey(raw json.RawMessage) (map[string]string, error) {
	var k struct {
		Kty, Crv, Alg, X, Y, N, E *string
	}
	if err := json.Unmarshal(raw, &k); err != nil || k.Kty == nil {
		return nil, errors.New("not a JWK object with kty")
	}
	need := func(name string, v *string) (string, error) {
		if v == nil {
			return "", fmt.Errorf("missing field `%s`", name)
		}
		return *v, nil
	}
	out := map[string]string{"kty": *k.Kty}
	var fields []struct {
		name string
		v    *string
	}
	switch *k.Kty {
	case "EC":
		fields = []struct {
			name string
			v    *string
		}{{"crv", k.Crv}, {"alg", k.Alg}, {"x", k.X}, {"y", k.Y}}
	case "RSA":
		fields = []struct {
			name string
			v    *string
		}{{"alg", k.Alg}, {"n", k.N}, {"e", k.E}}
	default:
		return nil, fmt.Errorf("unknown kty %q", *k.Kty)
	}
	for _, f := range fields {
		v, err := need(f.name, f.v)
		if err != nil {
			return nil, err
		}
		out[f.name] = v
	}
	return out, nil
}

// bindingDigest is SHA-384 over the JCS form of
// {"additional-evidence","nonce","tee-pubkey"} (spec "report_data binding").
// JCS here is done by sorting keys by hand, independently of kbsclient.
func bindingDigest(nonce string, jwk map[string]string, additional string) ([]byte, error) {
	var b bytes.Buffer
	str := func(s string) {
		v, _ := jsonMarshal(s)
		b.Write(v)
	}
	b.WriteString(`{"additional-evidence":`)
	str(additional)
	b.WriteString(`,"nonce":`)
	str(nonce)
	b.WriteString(`,"tee-pubkey":{`)
	for i, k := range slices.Sorted(maps.Keys(jwk)) {
		if i > 0 {
			b.WriteByte(',')
		}
		str(k)
		b.WriteByte(':')
		str(jwk[k])
	}
	b.WriteString("}}")
	sum := sha512.Sum384(b.Bytes())
	return sum[:], nil
}

// verifyEvidence checks the primary evidence of tee against the expected
// binding digest (and the init-data digest, when init-data was sent) and
// returns claims for the token.
func (s *Server) verifyEvidence(tee string, primary json.RawMessage, digest, initDigest []byte) (map[string]any, error) {
	switch tee {
	case "tdx":
		return verifyTDX(primary, digest, initDigest, s.cfg.TDXRoots, s.cfg.Now())
	case "snp":
		return verifySNP(primary, digest, initDigest, s.cfg.SNPRoots, s.cfg.Now())
	case azure.TeeSNP, azure.TeeTDX:
		return verifyAzure(tee, primary, digest, initDigest, s.cfg.SNPRoots, s.cfg.TDXRoots, s.cfg.Now())
	case "sample":
		var ev struct {
			SVN        *string `json:"svn"`
			ReportData *string `json:"report_data"`
		}
		if err := json.Unmarshal(primary, &ev); err != nil || ev.SVN == nil || ev.ReportData == nil {
			return nil, errors.New("sample evidence must be {\"svn\":…,\"report_data\":…}")
		}
		rd, err := base64.StdEncoding.DecodeString(*ev.ReportData)
		if err != nil {
			return nil, errors.New("sample report_data is not standard base64")
		}
		if !bytes.Equal(rd, digest) {
			return nil, errors.New("report_data does not match the runtime data binding")
		}
		return map[string]any{"svn": *ev.SVN, "report_data": *ev.ReportData}, nil
	}
	return nil, fmt.Errorf("no verifier for tee %q in the test KBS", tee)
}

// initDataDigest hashes the exact init-data body with the TOML's own
// "algorithm" (sha256, sha384 or sha512), as Trustee does.
func initDataDigest(body string) ([]byte, error) {
	var doc struct {
		Version   string `toml:"version"`
		Algorithm string `toml:"algorithm"`
	}
	if err := toml.Unmarshal([]byte(body), &doc); err != nil {
		return nil, fmt.Errorf("body is not TOML: %w", err)
	}
	switch doc.Algorithm {
	case "sha256":
		h := sha256.Sum256([]byte(body))
		return h[:], nil
	case "sha384":
		h := sha512.Sum384([]byte(body))
		return h[:], nil
	case "sha512":
		h := sha512.Sum512([]byte(body))
		return h[:], nil
	}
	return nil, fmt.Errorf("unsupported algorithm %q", doc.Algorithm)
}
