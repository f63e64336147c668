package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Setting is one effective configuration value and the source it came
// from, for `cdh-proxy config`.
type Setting struct {
	Name   string // the flag name operators know it by
	Value  string // printable; nothing secret (see Describe)
	Source string // "default", "--bind", "cdh.toml /path [kbc] url", …
}

// Describe lists the effective configuration with each value's source.
// Nothing secret is printed: URLs lose user info and query, certificates
// and init-data are shown as SHA-256 fingerprints, credentials by URI and
// path (never content; there is none in the configuration anyway).
func (c *Config) Describe() []Setting {
	dur := func(d interface{ String() string }) string { return d.String() }
	var urls []string
	for _, u := range c.KBSURLs {
		urls = append(urls, redactURL(u))
	}
	var certs []string
	for _, p := range c.KBSCerts {
		certs = append(certs, certFingerprint(p))
	}
	var creds []string
	for _, cr := range c.Credentials {
		creds = append(creds, redactURL(cr.ResourceURI)+" -> "+cr.Path)
	}
	initData := "none"
	if c.InitData != nil {
		sum := sha256.Sum256(c.InitData)
		initData = fmt.Sprintf("%s (sha256 %s)", c.InitDataPath, hex.EncodeToString(sum[:8]))
	}
	orNone := func(s string) string {
		if s == "" {
			return "none"
		}
		return s
	}
	rows := []struct{ name, field, value string }{
		{"kbs-url", "KBSURLs", strings.Join(urls, ", ")},
		{"kbs-failback", "KBSFailback", dur(c.KBSFailback)},
		{"kbs-cert", "KBSCerts", orNone(strings.Join(certs, ", "))},
		{"attester", "Attester", c.Attester},
		{"sample-fallback", "SampleFallback", strconv.FormatBool(c.SampleFallback)},
		{"tee-key-alg", "KeyAlgorithm", orNone(c.KeyAlgorithm)},
		{"initdata", "InitData", initData},
		{"bind", "Bind", c.Bind},
		{"features", "Features", c.Features.String()},
		{"require-header", "RequireHeader", orNone(c.RequireHeader)},
		{"metrics-bind", "MetricsBind", orNone(c.MetricsBind)},
		{"cdh-socket", "CDHSocket", orNone(c.CDHSocket)},
		{"aa-socket", "AASocket", orNone(c.AASocket)},
		{"budget", "Budget", dur(c.Budget)},
		{"cache-ttl", "CacheTTL", dur(c.CacheTTL)},
		{"cache-max-bytes", "CacheMaxByte", strconv.FormatInt(c.CacheMaxByte, 10)},
		{"cache-max-entry", "CacheMaxItem", strconv.FormatInt(c.CacheMaxItem, 10)},
		{"stale-if-error", "StaleIfError", dur(c.StaleIfError)},
		{"cache-plugin", "CachePlugins", orNone(strings.Join(c.CachePlugins, ", "))},
		{"credentials", "Credentials", orNone(strings.Join(creds, ", "))},
		{"image", "Image", c.Image.describe()},
		{"skip-sealed-secret-verification", "SkipSealedSecretVerification", strconv.FormatBool(c.SkipSealedSecretVerification)},
		{"eventlog", "EventLog", strconv.FormatBool(c.EventLog)},
		{"eventlog-init-pcr", "InitPCR", strconv.FormatUint(c.InitPCR, 10)},
		{"aa-addr", "AAAddr", c.AAAddr},
		{"tdx-eventlog", "TDXEventLog", orNone(c.TDXEventLog)},
		{"tpm", "TPM", orNone(c.TPM)},
		{"azure-imds", "AzureIMDS", orNone(redactURL(c.AzureIMDS))},
		{"azure-evidence-version", "AzureEvidenceVersion", strconv.Itoa(c.AzureEvidenceVersion)},
		{"log-level", "LogLevel", c.LogLevel},
		{"log-format", "LogFormat", c.LogFormat},
	}
	out := make([]Setting, len(rows))
	for i, r := range rows {
		src := c.Sources[r.field]
		if src == "" {
			src = "default"
		}
		out[i] = Setting{Name: r.name, Value: r.value, Source: src}
	}
	return out
}

// redactURL drops user info, query and fragment: the parts of a URL that
// can carry credentials.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.User == nil && u.RawQuery == "" && u.Fragment == "") {
		return s
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	return u.String()
}

// certFingerprint names a PEM CA by the SHA-256 of its first certificate.
func certFingerprint(p []byte) string {
	block, _ := pem.Decode(p)
	if block == nil {
		return "unparsable PEM"
	}
	sum := sha256.Sum256(block.Bytes)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
