package imagepull

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.yaml.in/yaml/v3"
	"golang.org/x/net/http/httpproxy"

	"github.com/cdh-proxy/cdh-proxy/internal/securefile"
)

// env is what one pull runs with: the containers/image system context
// (registries, credentials, lookaside, roots, proxy) and the policy.
type env struct {
	sys    *types.SystemContext
	policy *signature.Policy
	// policyNote says which policy applies, for logs.
	policyNote string
}

// loadURI reads a kbs:/// resource through the resource cache or a
// file:// path, as image-rs accepts them.
func loadURI(ctx context.Context, fetch Fetcher, what, uri string) ([]byte, error) {
	switch {
	case strings.HasPrefix(uri, "kbs:///"):
		b, err := fetch.Fetch(ctx, uri)
		if err != nil {
			return nil, &Error{Code: CodeFromFetch, Msg: what + " " + uri, Err: err}
		}
		return b, nil
	case strings.HasPrefix(uri, "file://"):
		u, err := url.Parse(uri)
		if err != nil || u.Path == "" || (u.Host != "" && u.Host != "localhost") {
			return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("%s %q is not a file:///absolute/path URI", what, uri)}
		}
		b, err := os.ReadFile(u.Path)
		if err != nil {
			return nil, &Error{Code: CodeInvalid, Msg: what + " " + uri, Err: err}
		}
		return b, nil
	}
	return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("%s %q: want a kbs:/// or file:// URI", what, uri)}
}

// buildEnv fetches what the [image] config points at and lays it out as
// containers/image reads it. Files go to <work_dir>/conf/<content hash>:
// the same content always has the same path, because containers/image
// caches registries.conf by path.
func (p *Puller) buildEnv(ctx context.Context) (*env, error) {
	im := p.cfg
	files := map[string][]byte{}

	regs := im.Registries
	if im.RegistriesURI != "" {
		b, err := loadURI(ctx, p.fetch, "registry configuration", im.RegistriesURI)
		if err != nil {
			return nil, err
		}
		regs = b
	}
	files["registries.conf"] = append([]byte{}, regs...)

	sigstore := map[string]any{}
	if im.SigstoreConfigURI != "" {
		b, err := loadURI(ctx, p.fetch, "sigstore configuration", im.SigstoreConfigURI)
		if err != nil {
			return nil, err
		}
		if err := yaml.Unmarshal(b, &sigstore); err != nil {
			return nil, &Error{Code: CodeInvalid, Msg: "sigstore configuration " + im.SigstoreConfigURI + " is not YAML", Err: err}
		}
	}
	// cosign signatures live in the registry as sha256-<digest>.sig; image-rs
	// always looks there, containers/image only where this is set.
	dd, _ := sigstore["default-docker"].(map[string]any)
	if dd == nil {
		dd = map[string]any{}
	}
	if _, ok := dd["use-sigstore-attachments"]; !ok {
		dd["use-sigstore-attachments"] = true
	}
	sigstore["default-docker"] = dd
	sy, err := yaml.Marshal(sigstore)
	if err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "sigstore configuration", Err: err}
	}
	files["registries.d/cdh-proxy.yaml"] = sy

	if im.AuthURI != "" {
		b, err := loadURI(ctx, p.fetch, "registry credentials", im.AuthURI)
		if err != nil {
			return nil, err
		}
		var probe struct {
			Auths map[string]json.RawMessage `json:"auths"`
		}
		if json.Unmarshal(b, &probe) != nil {
			return nil, &Error{Code: CodeInvalid, Msg: "registry credentials " + im.AuthURI + " are not an auth.json ({\"auths\":{…}})"}
		}
		files["auth.json"] = b
	}
	for i, pem := range im.ExtraRootCertificates {
		files[fmt.Sprintf("certs/extra-%d.crt", i)] = []byte(pem)
	}

	dir, err := p.writeConf(files)
	if err != nil {
		return nil, err
	}
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    filepath.Join(dir, "registries.conf"),
		SystemRegistriesConfDirPath: filepath.Join(dir, "registries.conf.d"), // never created: no drop-ins from the guest
		RegistriesDirPath:           filepath.Join(dir, "registries.d"),
		AuthFilePath:                filepath.Join(dir, "auth.json"), // absent = no credentials, never $HOME's
		BigFilesTemporaryDir:        filepath.Join(im.WorkDir, "tmp"),
		DockerRegistryUserAgent:     "cdh-proxy",
		OSChoice:                    runtime.GOOS,
		ArchitectureChoice:          runtime.GOARCH,
	}
	if len(im.ExtraRootCertificates) > 0 {
		sys.DockerCertPath = filepath.Join(dir, "certs") // system roots plus these, for every registry
	}
	if im.HTTPProxy != "" || im.HTTPSProxy != "" {
		pf := (&httpproxy.Config{HTTPProxy: im.HTTPProxy, HTTPSProxy: im.HTTPSProxy, NoProxy: im.NoProxy}).ProxyFunc()
		sys.DockerProxy = func(u *url.URL) (*url.URL, error) { return pf(u) }
	}

	e := &env{sys: sys}
	if e.policy, e.policyNote, err = p.loadPolicy(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// writeConf writes files under conf/<hash of all of them>, once.
func (p *Puller) writeConf(files map[string][]byte) (string, error) {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(files)) {
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(files[name]))
		h.Write(files[name])
	}
	dir := filepath.Join(p.cfg.WorkDir, "conf", hex.EncodeToString(h.Sum(nil))[:32])
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(filepath.Join(p.cfg.WorkDir, "conf"), ".tmp-")
	if err != nil {
		return "", classify("image work_dir", err)
	}
	for name, b := range files {
		path := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			os.RemoveAll(tmp)
			return "", classify("image work_dir", err)
		}
		if err := securefile.Write(path, b); err != nil {
			os.RemoveAll(tmp)
			return "", classify("image work_dir", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(dir); serr == nil { // a concurrent pull wrote the same
			return dir, nil
		}
		return "", classify("image work_dir", err)
	}
	return dir, nil
}

// loadPolicy reads the containers-policy.json. With none configured every
// image is accepted, as guest-components does (image-rs verifies only when
// a policy is given). A keyPath that is a kbs:/// URI is fetched and
// inlined as keyData, CoCo's extension of the format.
func (p *Puller) loadPolicy(ctx context.Context) (*signature.Policy, string, error) {
	var raw []byte
	note := "none configured: every image accepted"
	switch {
	case p.cfg.PolicyURI != "":
		b, err := loadURI(ctx, p.fetch, "image security policy", p.cfg.PolicyURI)
		if err != nil {
			return nil, "", err
		}
		raw, note = b, p.cfg.PolicyURI
	case p.cfg.Policy != "":
		raw, note = []byte(p.cfg.Policy), "inline image_security_policy"
	default:
		pol := &signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}}
		return pol, note, nil
	}
	raw, err := inlineKBSKeys(ctx, p.fetch, raw)
	if err != nil {
		return nil, "", err
	}
	pol, err := ParsePolicy(raw)
	if err != nil {
		return nil, "", &Error{Code: CodeInvalid, Msg: "image security policy " + note, Err: err}
	}
	return pol, note, nil
}

// ParsePolicy parses containers-policy.json(5) bytes whose keys are inline.
func ParsePolicy(raw []byte) (*signature.Policy, error) {
	return signature.NewPolicyFromBytes(raw)
}

// inlineKBSKeys replaces every "keyPath": "kbs:///…" in a policy with
// "keyData": base64(the resource).
func inlineKBSKeys(ctx context.Context, fetch Fetcher, raw []byte) ([]byte, error) {
	if !bytes.Contains(raw, []byte("kbs:///")) {
		return raw, nil
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "image security policy is not JSON", Err: err}
	}
	var walk func(v any) error
	walk = func(v any) error {
		switch x := v.(type) {
		case map[string]any:
			if kp, ok := x["keyPath"].(string); ok && strings.HasPrefix(kp, "kbs:///") {
				key, err := fetch.Fetch(ctx, kp)
				if err != nil {
					return &Error{Code: CodeFromFetch, Msg: "policy key " + kp, Err: err}
				}
				delete(x, "keyPath")
				x["keyData"] = base64.StdEncoding.EncodeToString(key)
			}
			for _, c := range x {
				if err := walk(c); err != nil {
					return err
				}
			}
		case []any:
			for _, c := range x {
				if err := walk(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(doc); err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}
