// Package config turns flags, environment and the files operators already
// write (cdh.toml; aa.toml, kernel cmdline and initdata in later issues) into
// one validated Config of plain values. Components never read env, flags or
// files themselves: main fills their Configs from this one.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Defaults (design.md, "Behaviour that users expect").
const (
	DefaultBind          = "127.0.0.1:8006"
	DefaultCacheTTL      = 60 * time.Second
	DefaultCacheMaxBytes = 64 << 20
	DefaultCacheMaxEntry = 1 << 20
	DefaultBudget        = 30 * time.Second
	EnvKBCParams         = "AA_KBC_PARAMS"
	EnvSkipSealedVerify  = "SKIP_SEALED_SECRET_VERIFICATION"
	DefaultCDHSocket     = "unix:///run/confidential-containers/cdh.sock"
	DefaultAASocket      = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
)

// Config is the merged configuration.
type Config struct {
	KBSURL string // the first (preferred) KBS endpoint
	// KBSURLs are every KBS endpoint in order of preference; KBSURLs[0] is
	// KBSURL. Further ones are failed over to (kbsclient endpoints.go).
	KBSURLs      []string
	KBSURLSource string // where the KBS URLs came from, for messages
	// KBSFailback is how long a failed endpoint is passed over; 0 = default.
	KBSFailback time.Duration
	// CachePlugins names KBS plugins whose answers are cached like resources.
	CachePlugins  []string
	KBSCerts      [][]byte // extra PEM roots for the KBS connection
	Attester      string   // auto | tdx | snp | az-snp-vtpm | az-tdx-vtpm | sample
	KeyAlgorithm  string   // kbsclient.ParseKeyAlgorithm names
	Bind          string
	CacheTTL      time.Duration
	CacheMaxByte  int64
	CacheMaxItem  int64
	StaleIfError  time.Duration // serve the last good copy this long past its TTL when the KBS fails
	RequireHeader string        // HTTP requests must carry this header (anti-SSRF); "" = off
	MetricsBind   string        // extra listener serving only /metrics; "" = none
	Budget        time.Duration
	LogLevel      string
	LogFormat     string // text | json
	Features      string // resource | attestation | all (ASR --features)
	TDXEventLog   string // CCEL path sent as cc_eventlog; "" sends null
	TPM           string // Azure vTPM device or swtpm socket; "" = /dev/tpmrm0
	AzureIMDS     string // Azure metadata service base URL; "" = http://169.254.169.254
	// AzureEvidenceVersion is 2 (Trustee ≥ 0.21) or 1 (Trustee 0.18–0.20).
	AzureEvidenceVersion int
	InitDataPath         string // "" when none
	InitData             []byte // exact initdata TOML bytes
	CDHSocket            string // unix:// URI to serve CDH on; "" = not served
	AASocket             string // unix:// URI to serve AA on; "" = not served
	Credentials          []Credential
	CredDir              string
	// SkipSealedSecretVerification: cdh.toml key or SKIP_SEALED_SECRET_VERIFICATION=true.
	SkipSealedSecretVerification bool
	// Warnings are non-fatal findings (unknown keys, ignored sections) for main to log.
	Warnings []string
}

// Flags are the command-line values; zero means "not given".
type Flags struct {
	KBSURLs       []string // --kbs-url, repeatable: endpoints in order of preference
	KBSFailback   time.Duration
	CachePlugins  []string
	KBSCerts      []string // --kbs-cert, repeatable: PEM files of extra root CAs
	ConfigFile    string   // cdh.toml (-c)
	Attester      string
	KeyAlgorithm  string
	Bind          string
	CacheTTL      *time.Duration
	CacheMaxByte  int64
	CacheMaxItem  int64
	StaleIfError  time.Duration
	RequireHeader string
	MetricsBind   string
	Budget        time.Duration
	LogLevel      string
	LogFormat     string
	Features      string
	TDXEventLog   string
	TPM           string
	AzureIMDS     string
	// AzureEvidenceVersion: 0 means 2.
	AzureEvidenceVersion int
	// InitData is an initdata TOML path; "" uses DefaultInitDataPath when it exists.
	InitData string
	// AAConfigFile is aa.toml.
	AAConfigFile string
	// Cmdline is the kernel command line file; "" → DefaultCmdline, "-" → none.
	Cmdline string
	// CDHSocket/AASocket are the socket URIs to serve ("none" disables);
	// nil keeps what the config file says (cdh.toml socket), else none.
	CDHSocket, AASocket *string
	// CredDir overrides DefaultCredentialsDir (tests).
	CredDir string
	// InitDataDir is where kata writes initdata.toml, cdh.toml and aa.toml
	// from the host-bound initdata; "" → DefaultInitDataDir, "-" → none.
	// Files found there are used when the matching option is not given.
	InitDataDir string
}

// Env reads an environment variable; os.LookupEnv in main, a map in tests.
type Env func(string) (string, bool)

// Load merges the sources. Precedence for the KBS URL, highest first:
// --kbs-url, AA_KBC_PARAMS, cdh.toml [kbc] url, aa.toml [token_configs.kbs]
// url, kernel cmdline agent.aa_kbc_params. --kbs-url and cdh.toml's url
// may list several endpoints; the winning source gives the whole list. A URL that differs between
// sources is reported as a warning naming both. Extra KBS roots from
// cdh.toml kbs_cert, aa.toml cert and --kbs-cert are all trusted.
func Load(f Flags, env Env) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	c := &Config{
		Attester: f.Attester, KeyAlgorithm: f.KeyAlgorithm, Bind: DefaultBind,
		CacheTTL: DefaultCacheTTL, CacheMaxByte: DefaultCacheMaxBytes, CacheMaxItem: DefaultCacheMaxEntry,
		Budget: DefaultBudget, LogLevel: "info", LogFormat: "text", Features: "resource",
		CredDir: DefaultCredentialsDir,
	}
	type urlSource struct {
		urls []string
		from string
	}
	var urls []urlSource
	addKBC := func(params, from string) error {
		u, err := ParseKBCParams(params)
		if err != nil {
			return fmt.Errorf("%s: %w", from, err)
		}
		urls = append(urls, urlSource{[]string{u}, from})
		return nil
	}

	if len(f.KBSURLs) > 0 {
		urls = append(urls, urlSource{f.KBSURLs, "--kbs-url"})
	}
	if v, ok := env(EnvKBCParams); ok && v != "" {
		if err := addKBC(v, EnvKBCParams); err != nil {
			return nil, err
		}
	}
	if f.CredDir != "" {
		c.CredDir = f.CredDir
	}
	if f.InitDataDir != "-" {
		dir := cmp.Or(f.InitDataDir, DefaultInitDataDir)
		for _, d := range []struct {
			dst  *string
			name string
		}{{&f.ConfigFile, "cdh.toml"}, {&f.AAConfigFile, "aa.toml"}, {&f.InitData, "initdata.toml"}} {
			if *d.dst == "" {
				if p := filepath.Join(dir, d.name); fileExists(p) {
					*d.dst = p
				}
			}
		}
	}
	if f.ConfigFile != "" {
		cdh, warns, err := LoadCDHFile(f.ConfigFile)
		if err != nil {
			return nil, err
		}
		c.Warnings = append(c.Warnings, warns...)
		urls = append(urls, urlSource{cdh.KBC.URL, f.ConfigFile + " [kbc] url"})
		if cdh.KBC.KBSCert != "" {
			c.KBSCerts = append(c.KBSCerts, []byte(cdh.KBC.KBSCert))
		}
		if cdh.Log.Level != "" {
			c.LogLevel = strings.ToLower(cdh.Log.Level)
		}
		if cdh.Socket != "" {
			c.CDHSocket = cdh.Socket
		}
		c.SkipSealedSecretVerification = cdh.SkipSealedSecretVerification
		for _, cr := range cdh.Credentials {
			c.Credentials = append(c.Credentials, Credential{ResourceURI: cr.ResourceURI, Path: cr.Path, Source: f.ConfigFile})
		}
	}
	if f.AAConfigFile != "" {
		aa, warns, err := LoadAAFile(f.AAConfigFile)
		if err != nil {
			return nil, err
		}
		c.Warnings = append(c.Warnings, warns...)
		if u := aa.TokenConfigs.KBS.URL; u != "" {
			urls = append(urls, urlSource{[]string{u}, f.AAConfigFile + " [token_configs.kbs] url"})
		}
		if aa.TokenConfigs.KBS.Cert != "" {
			c.KBSCerts = append(c.KBSCerts, []byte(aa.TokenConfigs.KBS.Cert))
		}
		if c.KeyAlgorithm == "" {
			c.KeyAlgorithm = cmp.Or(aa.TokenConfigs.KBS.TeeKeyAlgorithm, aa.TeeKeyAlgorithm)
		}
		if aa.Log.Level != "" && f.ConfigFile == "" {
			c.LogLevel = strings.ToLower(aa.Log.Level)
		}
	}
	if f.Cmdline != "-" {
		path := cmp.Or(f.Cmdline, DefaultCmdline)
		if data, err := os.ReadFile(path); err == nil {
			cl, err := ParseCmdline(string(data))
			if err != nil {
				return nil, err
			}
			if cl.KBCParams != "" {
				if err := addKBC(cl.KBCParams, path+" agent.aa_kbc_params"); err != nil {
					return nil, err
				}
			}
			c.Credentials = append(c.Credentials, cl.Credentials...)
		} else if f.Cmdline != "" {
			return nil, fmt.Errorf("kernel cmdline: %w", err)
		}
	}
	if len(urls) == 0 {
		return nil, errors.New("no KBS URL: pass --kbs-url, set AA_KBC_PARAMS=cc_kbc::<url>, give a cdh.toml with [kbc] url (-c) or an aa.toml with [token_configs.kbs] url, or boot with agent.aa_kbc_params")
	}
	// The first source gives the whole list: endpoints are not merged
	// across sources, whose order would be anyone's guess.
	c.KBSURLs, c.KBSURLSource = urls[0].urls, urls[0].from
	c.KBSURL = c.KBSURLs[0]
	for _, o := range urls[1:] {
		if !slices.Equal(o.urls, c.KBSURLs) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("KBS URL %s from %s overrides %s from %s", quoteList(c.KBSURLs), c.KBSURLSource, quoteList(o.urls), o.from))
		}
	}
	c.KBSFailback = f.KBSFailback
	c.CachePlugins = f.CachePlugins
	if v, ok := env(EnvSkipSealedVerify); ok && strings.EqualFold(v, "true") {
		c.SkipSealedSecretVerification = true
	}
	for _, certFile := range f.KBSCerts {
		pem, err := os.ReadFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("--kbs-cert: %w", err)
		}
		c.KBSCerts = append(c.KBSCerts, pem)
	}
	if f.Bind != "" {
		c.Bind = f.Bind
	}
	if f.CacheTTL != nil {
		c.CacheTTL = *f.CacheTTL
	}
	c.CacheMaxByte = cmp.Or(f.CacheMaxByte, c.CacheMaxByte)
	c.CacheMaxItem = cmp.Or(f.CacheMaxItem, c.CacheMaxItem)
	c.Budget = cmp.Or(f.Budget, c.Budget)
	c.StaleIfError = f.StaleIfError
	c.RequireHeader = http.CanonicalHeaderKey(f.RequireHeader)
	c.MetricsBind = f.MetricsBind
	if f.LogLevel != "" {
		c.LogLevel = strings.ToLower(f.LogLevel)
	}
	c.LogFormat = cmp.Or(f.LogFormat, c.LogFormat)
	c.Attester = cmp.Or(c.Attester, "auto")
	c.Features = cmp.Or(f.Features, c.Features)
	for _, sock := range []struct {
		flag *string
		dst  *string
	}{{f.CDHSocket, &c.CDHSocket}, {f.AASocket, &c.AASocket}} {
		if sock.flag != nil {
			*sock.dst = *sock.flag
			if *sock.flag == "none" {
				*sock.dst = ""
			}
		}
	}
	c.TDXEventLog = f.TDXEventLog
	c.TPM, c.AzureIMDS = f.TPM, f.AzureIMDS
	c.AzureEvidenceVersion = cmp.Or(f.AzureEvidenceVersion, 2)
	c.InitDataPath = f.InitData
	if c.InitDataPath != "" {
		data, err := LoadInitData(c.InitDataPath)
		if err != nil {
			return nil, err
		}
		c.InitData = data
	}
	return c, c.Validate()
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Validate checks the merged values.
func (c *Config) Validate() error {
	var errs []error
	if len(c.KBSURLs) == 0 {
		c.KBSURLs = []string{c.KBSURL}
	}
	seen := map[string]bool{}
	for _, raw := range c.KBSURLs {
		if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("KBS URL %q (from %s): want http(s)://host[:port]", raw, c.KBSURLSource))
		}
		if seen[strings.TrimSuffix(raw, "/")] {
			errs = append(errs, fmt.Errorf("KBS URL %q (from %s) is listed twice", raw, c.KBSURLSource))
		}
		seen[strings.TrimSuffix(raw, "/")] = true
	}
	if c.KBSFailback < 0 {
		errs = append(errs, errors.New("--kbs-failback must not be negative"))
	}
	for _, name := range c.CachePlugins {
		if _, err := resource.ParsePlugin(name, "", ""); err != nil {
			errs = append(errs, fmt.Errorf("--cache-plugin %q: %w", name, err))
		}
	}
	switch c.Attester {
	case "auto", "sample", "tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm":
	default:
		errs = append(errs, fmt.Errorf("attester %q: want auto, tdx, snp, az-snp-vtpm, az-tdx-vtpm or sample", c.Attester))
	}
	if c.AzureEvidenceVersion != 1 && c.AzureEvidenceVersion != 2 {
		errs = append(errs, fmt.Errorf("Azure evidence version %d: want 2 (Trustee ≥ 0.21) or 1 (Trustee 0.18–0.20)", c.AzureEvidenceVersion))
	}
	if c.CacheTTL < 0 || c.StaleIfError < 0 {
		errs = append(errs, errors.New("cache TTL and stale-if-error must not be negative"))
	}
	if c.StaleIfError > 0 && c.CacheTTL == 0 {
		errs = append(errs, errors.New("--stale-if-error needs caching (--cache-ttl > 0)"))
	}
	if c.CacheMaxByte < 0 || c.CacheMaxItem < 0 {
		errs = append(errs, errors.New("cache sizes must not be negative"))
	}
	if c.Budget <= 0 {
		errs = append(errs, errors.New("request budget must be positive"))
	}
	for _, cr := range c.Credentials {
		if err := cr.validate(c.CredDir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sock := range []string{c.CDHSocket, c.AASocket} {
		if sock != "" && !strings.HasPrefix(strings.TrimPrefix(sock, "unix://"), "/") {
			errs = append(errs, fmt.Errorf("socket %q: want unix:///absolute/path", sock))
		}
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

func quoteList(l []string) string {
	if len(l) == 1 {
		return strconv.Quote(l[0])
	}
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
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
