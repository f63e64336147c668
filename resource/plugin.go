package resource

import (
	"fmt"
	"net/url"
	"strings"
)

// Plugin names a call to a KBS plugin other than resource: what Trustee
// serves at /kbs/v0/<plugin>/<path…>[?query] (sample, nebula-ca, pkcs11,
// external, …). Its answer may be a per-call credential, so callers must
// not cache it unless the operator said so for that plugin.
type Plugin struct {
	Name string
	// Path is "seg/seg/…" (possibly empty), each segment checked with the
	// resource segment rule.
	Path string
	// Query is forwarded to the KBS as is; it is validated.
	Query string
}

// maxPluginSegments bounds a plugin path; Trustee has no limit, but no
// plugin uses more than a handful and it keeps hostile input cheap.
const maxPluginSegments = 16

// reservedPlugins are KBS endpoints that are not plugins a workload may
// call: the handshake and the admin APIs. "resource" has its own path.
var reservedPlugins = map[string]string{
	"auth":               "the KBS handshake",
	"attest":             "the KBS handshake",
	"resource-policy":    "a KBS admin API",
	"attestation-policy": "a KBS admin API",
	"reference-value":    "a KBS admin API",
	"resource":           "served as resources (kbs:///<repo>/<type>/<tag>, /cdh/resource/…)",
}

// String returns "<plugin>/<path>[?query]": the KBS URL suffix, and the
// cache key prefix-free from resources (a resource key has no ':').
func (p Plugin) String() string {
	s := p.Name
	if p.Path != "" {
		s += "/" + p.Path
	}
	if p.Query != "" {
		s += "?" + p.Query
	}
	return s
}

// CacheKey keys a plugin answer apart from every resource key.
func (p Plugin) CacheKey() string { return "plugin:" + p.String() }

// ParsePlugin validates a plugin call: the name and every path segment with
// the resource segment rule (escaped as in a URL path, each segment
// unescaped on its own), and the query.
func ParsePlugin(name, escapedPath, rawQuery string) (Plugin, error) {
	if err := checkSegment(name); err != nil {
		return Plugin{}, fmt.Errorf("%w: plugin name: %w", ErrInvalidPath, err)
	}
	if why, ok := reservedPlugins[name]; ok {
		return Plugin{}, fmt.Errorf("%w: %q is not a plugin a workload calls (%s)", ErrInvalidPath, name, why)
	}
	var segs []string
	if escapedPath != "" {
		segs = strings.Split(escapedPath, "/")
	}
	if len(segs) > maxPluginSegments {
		return Plugin{}, fmt.Errorf("%w: plugin path has %d segments, at most %d", ErrInvalidPath, len(segs), maxPluginSegments)
	}
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			return Plugin{}, fmt.Errorf("%w: plugin path segment %d: bad escape", ErrInvalidPath, i+1)
		}
		if err := checkSegment(u); err != nil {
			return Plugin{}, fmt.Errorf("%w: plugin path segment %d: %w", ErrInvalidPath, i+1, err)
		}
		segs[i] = u
	}
	if err := checkQuery(rawQuery); err != nil {
		return Plugin{}, err
	}
	return Plugin{Name: name, Path: strings.Join(segs, "/"), Query: rawQuery}, nil
}

func checkQuery(raw string) error {
	if len(raw) > maxQuery {
		return fmt.Errorf("%w: query longer than %d bytes", ErrInvalidPath, maxQuery)
	}
	if strings.ContainsAny(raw, "#\x00") {
		return fmt.Errorf("%w: query holds '#' or NUL", ErrInvalidPath)
	}
	if _, err := url.ParseQuery(raw); err != nil {
		return fmt.Errorf("%w: query: %v", ErrInvalidPath, err)
	}
	return nil
}

// IsPluginURI reports whether uri names a plugin other than resource
// (kbs+<plugin>://…); ParsePluginURI parses it.
func IsPluginURI(uri string) bool {
	scheme, _, ok := strings.Cut(uri, ":")
	name, isPlugin := strings.CutPrefix(scheme, "kbs+")
	return ok && isPlugin && name != "resource"
}

// ParsePluginURI parses kbs+<plugin>://[host]/<path…>[?query] as CDH's
// GetResource accepts it. The host is ignored, as for resources.
func ParsePluginURI(uri string) (Plugin, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Plugin{}, fmt.Errorf("%w: plugin URI: %v", ErrInvalidPath, err)
	}
	name, ok := strings.CutPrefix(u.Scheme, "kbs+")
	if !ok {
		return Plugin{}, fmt.Errorf("%w: plugin URI %q: scheme must be kbs+<plugin>", ErrInvalidPath, uri)
	}
	if u.Opaque != "" || u.User != nil || u.Fragment != "" {
		return Plugin{}, fmt.Errorf("%w: plugin URI %q: want kbs+<plugin>:///<path>", ErrInvalidPath, uri)
	}
	return ParsePlugin(name, strings.TrimPrefix(u.EscapedPath(), "/"), u.RawQuery)
}
