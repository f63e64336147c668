// Package resource names KBS resources: the repo/type/tag triple, parsed from
// an HTTP path or a kbs:/// URI, validated once, the same way everywhere.
package resource

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// SegmentPattern is the KBS rule for each of the three path segments
// (spec kbs-protocol.md, "Endpoints"). It excludes "/", "%" and a leading
// ".", so "..", "." and a decoded "%2F" can never pass. validSegment
// implements it without regexp, on the hot path; a fuzz test holds the two
// equal.
const SegmentPattern = `^[A-Za-z0-9_-][A-Za-z0-9_.-]*$`

func validSegment(s string) bool {
	if s == "" || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// maxSegment bounds one segment; the KBS has no limit, but nothing legitimate
// comes close and it keeps hostile input cheap.
const maxSegment = 255

// ErrInvalidPath is wrapped by every parse failure.
var ErrInvalidPath = errors.New("invalid resource path")

// Path is a validated resource name.
type Path struct {
	Repo, Type, Tag string
	// Query is forwarded to the KBS as is (resource URIs may carry one); it
	// is already validated. Empty for HTTP requests, whose query is dropped.
	Query string

	// key is String() when known at parse time without allocating (an
	// unescaped HTTP path): the cache key on the hot path.
	key string
}

// String returns "repo/type/tag[?query]", the form used in KBS URLs and cache keys.
func (p Path) String() string {
	if p.key != "" {
		return p.key
	}
	s := p.Repo + "/" + p.Type + "/" + p.Tag
	if p.Query != "" {
		s += "?" + p.Query
	}
	return s
}

// New validates the three segments.
func New(repo, typ, tag string) (Path, error) {
	for i, s := range [3]string{repo, typ, tag} {
		if err := checkSegment(s); err != nil {
			return Path{}, fmt.Errorf("%w: segment %d: %w", ErrInvalidPath, i+1, err)
		}
	}
	return Path{Repo: repo, Type: typ, Tag: tag}, nil
}

func checkSegment(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxSegment:
		return fmt.Errorf("longer than %d bytes", maxSegment)
	case !validSegment(s):
		return fmt.Errorf("%q does not match %s", s, SegmentPattern)
	}
	return nil
}

// ParseEscaped parses "repo/type/tag" as it appears escaped in a URL path.
// Each segment is unescaped on its own, so "%2F" inside a segment becomes a
// "/" that the segment rule then rejects instead of silently adding a level.
func ParseEscaped(escaped string) (Path, error) {
	var seg [3]string
	rest := escaped
	for i := range seg {
		part, tail, more := strings.Cut(rest, "/")
		if more != (i < 2) {
			return Path{}, fmt.Errorf("%w: want exactly 3 segments repo/type/tag, got %d", ErrInvalidPath, strings.Count(escaped, "/")+1)
		}
		u, err := url.PathUnescape(part)
		if err != nil {
			return Path{}, fmt.Errorf("%w: segment %d: bad escape", ErrInvalidPath, i+1)
		}
		seg[i], rest = u, tail
	}
	p, err := New(seg[0], seg[1], seg[2])
	if err == nil && !strings.Contains(escaped, "%") {
		p.key = escaped // already exactly repo/type/tag
	}
	return p, err
}

// maxQuery bounds a forwarded query string.
const maxQuery = 1024

// ParseURI parses a KBS resource URI as CDH's GetResource and sealed secrets
// carry it: kbs://[host[:port]]/<repo>/<type>/<tag>[?query]. The host is
// ignored (the configured KBS is always used); kbs+resource:// is the same
// plugin spelled out. Other kbs+<plugin> schemes name plugin calls
// (ParsePluginURI) and are refused here with ErrUnsupportedPlugin. Unlike upstream's URL parser, which silently drops
// "." and ".." segments, such segments are rejected.
func ParseURI(uri string) (Path, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Path{}, fmt.Errorf("%w: resource URI: %v", ErrInvalidPath, err)
	}
	switch {
	case u.Scheme == "kbs" || u.Scheme == "kbs+resource":
	case strings.HasPrefix(u.Scheme, "kbs+"):
		return Path{}, fmt.Errorf("%w: %q", ErrUnsupportedPlugin, strings.TrimPrefix(u.Scheme, "kbs+"))
	default:
		return Path{}, fmt.Errorf("%w: resource URI %q: scheme must be kbs", ErrInvalidPath, uri)
	}
	if u.Opaque != "" || u.User != nil || u.Fragment != "" {
		return Path{}, fmt.Errorf("%w: resource URI %q: want kbs:///<repo>/<type>/<tag>", ErrInvalidPath, uri)
	}
	if err := checkQuery(u.RawQuery); err != nil {
		return Path{}, err
	}
	p, err := ParseEscaped(strings.TrimPrefix(u.EscapedPath(), "/"))
	if err != nil {
		return Path{}, err
	}
	p.Query, p.key = u.RawQuery, ""
	return p, nil
}

// ErrUnsupportedPlugin marks kbs+<plugin> URIs where only a resource may be
// named (sealed secrets, credentials).
var ErrUnsupportedPlugin = errors.New("a kbs+<plugin> URI names a KBS plugin call, not a resource; only resources are accepted here")
