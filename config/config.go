// Package config turns flags, environment and the files operators already
// write (cdh.toml; aa.toml, kernel cmdline and initdata in later issues) into
// one validated Config of plain values. Components never read env, flags or
// files themselves: main fills their Configs from this one.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults (design.md, "Behaviour that users expect").
const (
	DefaultBind          = "127.0.0.1:8006"
	DefaultCacheTTL      = 60 * time.Second
	DefaultCacheMaxBytes = 64 << 20
	DefaultCacheMaxEntry = 1 << 20
	DefaultBudget        = 30 * time.Second
	EnvKBCParams         = "AA_KBC_PARAMS"
)

// Config is the merged configuration.
type Config struct {
	KBSURL       string
	KBSURLSource string   // where KBSURL came from, for messages
	KBSCerts     [][]byte // extra PEM roots for the KBS connection
	Attester     string   // auto | sample (tdx, snp: issue 4)
	KeyAlgorithm string   // kbsclient.ParseKeyAlgorithm names
	Bind         string
	CacheTTL     time.Duration
	CacheMaxByte int64
	CacheMaxItem int64
	Budget       time.Duration
	LogLevel     string
	LogFormat    string // text | json
	Features     string // resource | attestation | all (ASR --features)
	TDXEventLog  string // CCEL path sent as cc_eventlog; "" sends null
	InitDataPath string // "" when none
	InitData     []byte // exact initdata TOML bytes
	// Warnings are non-fatal findings (unknown keys, ignored sections) for main to log.
	Warnings []string
}

// Flags are the command-line values; zero means "not given".
type Flags struct {
	KBSURL       string
	KBSCert      string // path to a PEM file
	ConfigFile   string // cdh.toml (-c)
	Attester     string
	KeyAlgorithm string
	Bind         string
	CacheTTL     *time.Duration
	CacheMaxByte int64
	CacheMaxItem int64
	Budget       time.Duration
	LogLevel     string
	LogFormat    string
	Features     string
	TDXEventLog  string
	// InitData is an initdata TOML path; "" uses DefaultInitDataPath when it exists.
	InitData string
}

// Env reads an environment variable; os.LookupEnv in main, a map in tests.
type Env func(string) (string, bool)

// Load merges the sources. Precedence for the KBS URL, highest first:
// --kbs-url, AA_KBC_PARAMS, cdh.toml [kbc] url. A URL that differs between
// sources is reported as a warning naming both.
func Load(f Flags, env Env) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	c := &Config{
		Attester: f.Attester, KeyAlgorithm: f.KeyAlgorithm, Bind: f.Bind,
		CacheTTL: DefaultCacheTTL, CacheMaxByte: DefaultCacheMaxBytes, CacheMaxItem: DefaultCacheMaxEntry,
		Budget: DefaultBudget, LogLevel: "info", LogFormat: "text",
	}
	type urlSource struct{ url, from string }
	var urls []urlSource

	if f.KBSURL != "" {
		urls = append(urls, urlSource{f.KBSURL, "--kbs-url"})
	}
	if v, ok := env(EnvKBCParams); ok && v != "" {
		u, err := ParseKBCParams(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvKBCParams, err)
		}
		urls = append(urls, urlSource{u, EnvKBCParams})
	}
	if f.ConfigFile != "" {
		cdh, warns, err := LoadCDHFile(f.ConfigFile)
		if err != nil {
			return nil, err
		}
		c.Warnings = append(c.Warnings, warns...)
		if cdh.KBC.URL != "" {
			urls = append(urls, urlSource{cdh.KBC.URL, f.ConfigFile + " [kbc] url"})
		}
		if cdh.KBC.KBSCert != "" {
			c.KBSCerts = append(c.KBSCerts, []byte(cdh.KBC.KBSCert))
		}
		if cdh.Log.Level != "" {
			c.LogLevel = strings.ToLower(cdh.Log.Level)
		}
	}
	if len(urls) == 0 {
		return nil, errors.New("no KBS URL: pass --kbs-url, set AA_KBC_PARAMS=cc_kbc::<url>, or give a cdh.toml with [kbc] url via -c")
	}
	c.KBSURL, c.KBSURLSource = urls[0].url, urls[0].from
	for _, o := range urls[1:] {
		if o.url != c.KBSURL {
			c.Warnings = append(c.Warnings, fmt.Sprintf("KBS URL %q from %s overrides %q from %s", c.KBSURL, c.KBSURLSource, o.url, o.from))
		}
	}
	if f.KBSCert != "" {
		pem, err := os.ReadFile(f.KBSCert)
		if err != nil {
			return nil, fmt.Errorf("--kbs-cert: %w", err)
		}
		c.KBSCerts = append(c.KBSCerts, pem)
	}
	if f.Bind != "" {
		c.Bind = f.Bind
	} else {
		c.Bind = DefaultBind
	}
	if f.CacheTTL != nil {
		c.CacheTTL = *f.CacheTTL
	}
	if f.CacheMaxByte != 0 {
		c.CacheMaxByte = f.CacheMaxByte
	}
	if f.CacheMaxItem != 0 {
		c.CacheMaxItem = f.CacheMaxItem
	}
	if f.Budget != 0 {
		c.Budget = f.Budget
	}
	if f.LogLevel != "" {
		c.LogLevel = strings.ToLower(f.LogLevel)
	}
	if f.LogFormat != "" {
		c.LogFormat = f.LogFormat
	}
	if c.Attester == "" {
		c.Attester = "auto"
	}
	c.Features = f.Features
	if c.Features == "" {
		c.Features = "resource"
	}
	c.TDXEventLog = f.TDXEventLog
	c.InitDataPath = f.InitData
	if c.InitDataPath == "" {
		if _, err := os.Stat(DefaultInitDataPath); err == nil {
			c.InitDataPath = DefaultInitDataPath
		}
	}
	if c.InitDataPath != "" {
		data, err := LoadInitData(c.InitDataPath)
		if err != nil {
			return nil, err
		}
		c.InitData = data
	}
	return c, c.Validate()
}

// Validate checks the merged values.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.KBSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("KBS URL %q (from %s): want http(s)://host[:port]", c.KBSURL, c.KBSURLSource))
	}
	switch c.Attester {
	case "auto", "sample", "tdx", "snp":
	default:
		errs = append(errs, fmt.Errorf("attester %q: want auto, tdx, snp or sample", c.Attester))
	}
	if c.CacheTTL < 0 {
		errs = append(errs, errors.New("cache TTL must not be negative"))
	}
	if c.CacheMaxByte < 0 || c.CacheMaxItem < 0 {
		errs = append(errs, errors.New("cache sizes must not be negative"))
	}
	if c.Budget <= 0 {
		errs = append(errs, errors.New("request budget must be positive"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.Features {
	case "resource", "attestation", "all":
	default:
		errs = append(errs, fmt.Errorf("features %q: want resource, attestation or all", c.Features))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log format %q: want text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

// ParseKBCParams parses AA_KBC_PARAMS ("cc_kbc::<url>"): split on "::" into
// exactly two parts, as upstream does (so an IPv6 literal with "::" is
// refused there too).
func ParseKBCParams(v string) (string, error) {
	parts := strings.Split(v, "::")
	if len(parts) != 2 {
		return "", fmt.Errorf("%q: want cc_kbc::<url> (exactly one \"::\")", v)
	}
	if parts[0] != "cc_kbc" {
		return "", fmt.Errorf("%q: KBC %q is not supported (only cc_kbc)", v, parts[0])
	}
	if parts[1] == "" {
		return "", fmt.Errorf("%q: empty KBS URL", v)
	}
	return parts[1], nil
}
