package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestBindingDigestVector(t *testing.T) {
	// spec kbs-protocol.md worked vector
	jwk := map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
		"x": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE", "y": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"}
	d, err := bindingDigest("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", jwk, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(d); got != "d934ba73c76ad6ce42e80746cefb42b74c7e0af0f0d30ace51557c3da2a8fe7608b3c6856f09e1f101fd459a86b1c846" {
		t.Fatalf("digest %s", got)
	}
}

type rawClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	key  *ecdsa.PrivateKey
	jwk  map[string]string
}

func newServer(t *testing.T, cfg Config) (*Server, *rawClient, TreeStore) {
	t.Helper()
	store := TreeStore{Dir: t.TempDir()}
	if err := store.Write("default", "akv", "coco_one", []byte("a secret")); err != nil {
		t.Fatal(err)
	}
	cfg.Store = store
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	jar, _ := cookiejar.New(nil)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	enc := base64.RawURLEncoding.EncodeToString
	jwk := map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
		"x": enc(key.X.FillBytes(make([]byte, 32))), "y": enc(key.Y.FillBytes(make([]byte, 32)))}
	return s, &rawClient{t: t, base: ts.URL + "/kbs/v0/", hc: &http.Client{Jar: jar}, key: key, jwk: jwk}, store
}

func (c *rawClient) do(method, path, body string, hdr ...string) (int, http.Header, map[string]any, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, resp.Header, m, raw
}

func (c *rawClient) auth() string {
	c.t.Helper()
	st, _, m, raw := c.do("POST", "auth", `{"version":"0.4.0","tee":"sample","extra-params":""}`)
	if st != 200 {
		c.t.Fatalf("auth: %d %s", st, raw)
	}
	return m["nonce"].(string)
}

func (c *rawClient) attestBody(nonce string, jwk map[string]string, rd []byte) string {
	pk, _ := json.Marshal(jwk)
	ev, _ := json.Marshal(map[string]string{"svn": "1", "report_data": base64.StdEncoding.EncodeToString(rd)})
	return `{"runtime-data":{"nonce":"` + nonce + `","tee-pubkey":` + string(pk) + `},"tee-evidence":{"primary_evidence":` + string(ev) + `,"additional_evidence":""}}`
}

func (c *rawClient) attest() string {
	c.t.Helper()
	nonce := c.auth()
	d, _ := bindingDigest(nonce, c.jwk, "")
	st, _, m, raw := c.do("POST", "attest", c.attestBody(nonce, c.jwk, d))
	if st != 200 {
		c.t.Fatalf("attest: %d %s", st, raw)
	}
	return m["token"].(string)
}

func wantKBSError(t *testing.T, st int, hdr http.Header, m map[string]any, wantStatus int, variant string) {
	t.Helper()
	if st != wantStatus || m["type"] != "https://github.com/confidential-containers/kbs/errors/"+variant {
		t.Fatalf("got %d %v, want %d %s", st, m, wantStatus, variant)
	}
	if ct := hdr.Get("Content-Type"); ct != "" {
		t.Fatalf("error body has Content-Type %q; Trustee sends none", ct)
	}
}

func TestAuthStrictness(t *testing.T) {
	_, c, _ := newServer(t, Config{})
	for _, tt := range []struct{ name, body, detail string }{
		{"old version", `{"version":"0.3.0","tee":"sample","extra-params":""}`, "expect =0.4.0 while the request is 0.3.0"},
		{"no extra-params", `{"version":"0.4.0","tee":"sample"}`, "extra-params"},
		{"unknown tee", `{"version":"0.4.0","tee":"quantum","extra-params":""}`, "unknown tee"},
		{"not json", `{`, "invalid request body"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, hdr, m, _ := c.do("POST", "auth", tt.body)
			wantKBSError(t, st, hdr, m, 401, "AttestationError")
			if !strings.Contains(m["detail"].(string), tt.detail) {
				t.Fatalf("detail %q lacks %q", m["detail"], tt.detail)
			}
		})
	}
	st, hdr, m, _ := c.do("GET", "auth", "")
	wantKBSError(t, st, hdr, m, 404, "PluginNotFound")
}

func TestAuthChallengeAndCookie(t *testing.T) {
	_, c, _ := newServer(t, Config{})
	st, hdr, m, _ := c.do("POST", "auth", `{"version":"0.4.0","tee":"sample","extra-params":null}`)
	if st != 200 || m["extra-params"] != "" {
		t.Fatalf("challenge %d %v", st, m)
	}
	raw, err := base64.StdEncoding.DecodeString(m["nonce"].(string))
	if err != nil || len(raw) != 32 || len(m["nonce"].(string)) != 44 {
		t.Fatalf("nonce %q: want padded std base64 of 32 bytes", m["nonce"])
	}
	ck := hdr.Get("Set-Cookie")
	if !strings.HasPrefix(ck, "kbs-session-id=") || strings.Contains(ck, "Path=") || !strings.Contains(ck, "Expires=") {
		t.Fatalf("cookie %q", ck)
	}
	if id := strings.TrimPrefix(strings.SplitN(ck, ";", 2)[0], "kbs-session-id="); len(id) != 32 || strings.ToLower(id) != id {
		t.Fatalf("session id %q: want 32 lowercase hex", id)
	}
}

func TestAttestStrictness(t *testing.T) {
	_, c, _ := newServer(t, Config{})
	nonce := c.auth()
	d, _ := bindingDigest(nonce, c.jwk, "")

	withExtra := map[string]string{"use": "enc"}
	for k, v := range c.jwk {
		withExtra[k] = v
	}
	for _, tt := range []struct{ name, body, detail string }{
		{"nonce mismatch", c.attestBody("AAAA", c.jwk, d), "nonce mismatch"},
		{"wrong report_data", c.attestBody(nonce, c.jwk, make([]byte, 48)), "report_data does not match"},
		// The extra member is dropped by the typed parse, so the binding the
		// client computed over it no longer matches (spec "tee-pubkey").
		{"extra JWK member", func() string {
			dd, _ := bindingDigest(nonce, withExtra, "") // hashed with "use", as a naive client would
			return c.attestBody(nonce, withExtra, dd)
		}(), "report_data does not match"},
		{"missing additional_evidence", strings.Replace(c.attestBody(nonce, c.jwk, d), `,"additional_evidence":""`, "", 1), "additional_evidence"},
		{"bad init-data format", strings.TrimSuffix(c.attestBody(nonce, c.jwk, d), "}") + `,"init-data":{"format":"json","body":""}}`, "init-data"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, hdr, m, _ := c.do("POST", "attest", tt.body)
			wantKBSError(t, st, hdr, m, 401, "AttestationError")
			if !strings.Contains(m["detail"].(string), tt.detail) {
				t.Fatalf("detail %q lacks %q", m["detail"], tt.detail)
			}
		})
	}
	// Without the session cookie.
	fresh := &rawClient{t: t, base: c.base, hc: &http.Client{}}
	st, hdr, m, _ := fresh.do("POST", "attest", c.attestBody(nonce, c.jwk, d))
	wantKBSError(t, st, hdr, m, 401, "AttestationError")
}

func TestResourceAuthRules(t *testing.T) {
	clk := &struct{ now time.Time }{time.Now()}
	s, c, _ := newServer(t, Config{Now: func() time.Time { return clk.now }, TokenLifetime: time.Minute})
	st, hdr, m, _ := (&rawClient{t: t, base: c.base, hc: &http.Client{}}).do("GET", "resource/default/akv/coco_one", "")
	wantKBSError(t, st, hdr, m, 401, "TokenNotFound")

	tok := c.attest()
	// Cookie of the attested session works.
	st, _, _, raw := c.do("GET", "resource/default/akv/coco_one", "")
	if st != 200 {
		t.Fatalf("cookie auth: %d %s", st, raw)
	}
	plain := decryptEC(t, c.key, raw)
	if plain != "a secret" {
		t.Fatalf("plaintext %q", plain)
	}
	bearer := &rawClient{t: t, base: c.base, hc: &http.Client{}}
	st, _, _, raw = bearer.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok)
	if st != 200 || decryptEC(t, c.key, raw) != "a secret" {
		t.Fatalf("bearer auth: %d", st)
	}
	for _, tt := range []struct{ name, path, variant string }{
		{"missing", "resource/default/akv/nope", "PluginInternalError"},
		{"two segments", "resource/default/akv", "PluginInternalError"},
		{"dotdot", "resource/default/../coco_one", "PluginInternalError"},
		{"escaped slash", "resource/default/akv%2Fx/coco_one", "PluginInternalError"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, hdr, m, _ := bearer.do("GET", tt.path, "", "Authorization", "Bearer "+tok)
			wantKBSError(t, st, hdr, m, 401, tt.variant)
		})
	}
	st, hdr, m, _ = bearer.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok[:len(tok)-4]+"AAAA")
	wantKBSError(t, st, hdr, m, 401, "TokenVerifierError")
	s.SetPolicy(Policy{Allow: []string{"other/*/*"}})
	st, hdr, m, _ = bearer.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok)
	wantKBSError(t, st, hdr, m, 401, "PolicyDeny")
	// Bad paths are only reported after the policy check.
	st, hdr, m, _ = bearer.do("GET", "resource/default/akv", "", "Authorization", "Bearer "+tok)
	wantKBSError(t, st, hdr, m, 401, "PolicyDeny")
	s.SetPolicy(Policy{})
	clk.now = clk.now.Add(time.Minute + 59*time.Second) // inside the 60 s leeway
	if st, _, _, _ := bearer.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok); st != 200 {
		t.Fatalf("within leeway: %d", st)
	}
	clk.now = clk.now.Add(2 * time.Second)
	st, hdr, m, _ = bearer.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok)
	wantKBSError(t, st, hdr, m, 401, "TokenVerifierError")
	st, hdr, m, _ = c.do("GET", "nosuchplugin/x", "")
	wantKBSError(t, st, hdr, m, 404, "PluginNotFound")
}

func TestPaddedJWKFailsAtResource(t *testing.T) {
	_, c, _ := newServer(t, Config{})
	c.jwk["x"] += "=" // padded base64url: accepted at attest, fails at JWE time
	tok := c.attest()
	st, hdr, m, _ := c.do("GET", "resource/default/akv/coco_one", "", "Authorization", "Bearer "+tok)
	wantKBSError(t, st, hdr, m, 401, "JweError")
}

func decryptEC(t *testing.T, key *ecdsa.PrivateKey, body []byte) string {
	t.Helper()
	var flat map[string]any
	if err := json.Unmarshal(body, &flat); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"protected", "encrypted_key", "iv", "ciphertext", "tag"} {
		if _, ok := flat[k]; !ok {
			t.Fatalf("JWE lacks %s: %s", k, body)
		}
	}
	if _, ok := flat["header"]; ok {
		t.Fatalf("JWE has an unprotected header")
	}
	obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := obj.Decrypt(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(plain)
}

func TestAdminUpload(t *testing.T) {
	_, c, store := newServer(t, Config{AdminToken: "admintoken"})
	if st, _, _, _ := c.do("POST", "resource/default/key/k1", "v1"); st != 401 {
		t.Fatalf("upload without admin auth: %d", st)
	}
	if st, _, _, raw := c.do("POST", "resource/default/key/k1", "v1", "Authorization", "Bearer admintoken"); st != 200 {
		t.Fatalf("upload: %d %s", st, raw)
	}
	if got, err := store.Read("default", "key", "k1"); err != nil || string(got) != "v1" {
		t.Fatalf("stored %q %v", got, err)
	}
}

func TestLocalFsLayout(t *testing.T) {
	dir := t.TempDir()
	s := LocalFsStore{Dir: dir}
	if err := s.Write("default", "akv", "coco_one", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "repository", `default\x2Fakv\x2Fcoco_one`)); err != nil {
		t.Fatalf("LocalFs name: %v", err)
	}
	if got, err := s.Read("default", "akv", "coco_one"); err != nil || string(got) != "x" {
		t.Fatalf("read %q %v", got, err)
	}
}

func TestCSIRotation(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "default", "akv")
	if err := WriteCSI(dir, map[string][]byte{"coco_one": []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(filepath.Join(dir, "coco_one")); target != "..data/coco_one" {
		t.Fatalf("coco_one -> %q", target)
	}
	store := TreeStore{Dir: root}
	for i, want := range []string{"v2", "v3", "v4"} {
		if err := WriteCSI(dir, map[string][]byte{"coco_one": []byte(want)}); err != nil {
			t.Fatal(err)
		}
		if got, err := store.Read("default", "akv", "coco_one"); err != nil || string(got) != want {
			t.Fatalf("rotation %d: %q %v", i, got, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	gens := 0
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			gens++
		}
	}
	if gens != 2 {
		t.Fatalf("%d generations kept, want 2 (current and previous)", gens)
	}
}
