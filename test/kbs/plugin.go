package kbs

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
)

// Plugin is a KBS plugin as Trustee's plugin manager serves it at
// /kbs/v0/<name>/<path…>[?query]: after the token and the resource policy
// (whose input names the plugin), Handle answers; Encrypt says whether the
// answer goes out as a JWE to the token's key (Content-Type
// application/json) or as plain bytes (Content-Type text/xml, as Trustee
// labels every plain plugin answer).
type Plugin struct {
	Encrypt bool
	// Handle gets the path after the plugin name (with its leading "/", as
	// Trustee's resource-path) and the query. An error answers 401
	// PluginInternalError.
	Handle func(path string, query url.Values) ([]byte, error)
}

// SamplePlugin answers like Trustee's sample plugin: the same plain bytes
// for every GET.
func SamplePlugin() Plugin {
	return Plugin{Handle: func(string, url.Values) ([]byte, error) { return []byte("sample plugin response"), nil }}
}

// CredentialPlugin is an encrypting plugin whose every answer is a new
// per-call credential ("credential <n> for <path>?<query>"), like Trustee's
// nebula-ca or pkcs11 plugins minting one per call. A path "/missing…"
// fails, as a plugin without that item does.
func CredentialPlugin() Plugin {
	var n atomic.Uint64
	return Plugin{Encrypt: true, Handle: func(path string, q url.Values) ([]byte, error) {
		if strings.HasPrefix(path, "/missing") {
			return nil, fmt.Errorf("no such item %q", path)
		}
		return fmt.Appendf(nil, "credential %d for %s?%s", n.Add(1), path, q.Encode()), nil
	}}
}

// DefaultPlugins are the plugins the demo and tests enable besides resource.
func DefaultPlugins() map[string]Plugin {
	return map[string]Plugin{"sample": SamplePlugin(), "credential": CredentialPlugin()}
}

func (s *Server) handlePlugin(w http.ResponseWriter, r *http.Request, name string, p Plugin, sub string) {
	g, ok := s.authorize(w, r)
	if !ok {
		return
	}
	jwk := g.jwk
	s.mu.Lock()
	pol := s.policy
	s.mu.Unlock()
	if !pol.allowsPlugin(g.tee, name) {
		writeError(w, http.StatusUnauthorized, "PolicyDeny", "Access denied by policy")
		return
	}
	path, err := url.PathUnescape(sub)
	if err != nil {
		writeError(w, http.StatusUnauthorized, "PluginInternalError", "Plugin internal error")
		return
	}
	out, err := p.Handle("/"+path, r.URL.Query())
	if err != nil {
		s.log.Info("plugin failed", "plugin", name, "err", err)
		writeError(w, http.StatusUnauthorized, "PluginInternalError", "Plugin internal error")
		return
	}
	if !p.Encrypt {
		w.Header().Set("Content-Type", "text/xml")
		_, _ = w.Write(out)
		return
	}
	body, err := encryptTo(jwk, out)
	if err != nil {
		writeError(w, http.StatusUnauthorized, "JweError", "JWE failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}
