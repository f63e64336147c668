// Package config turns flags, environment and the files operators already
// write (cdh.toml, aa.toml, the kernel cmdline, initdata) into one validated
// Config of plain values, recording which source set each value. Each
// source is read by one function into a partial config (sources.go); Load
// merges them in one explicit order of precedence. Components never read
// env, flags or files themselves: the daemon fills their Configs from this.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cdh-proxy/cdh-proxy/core"
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
	// EnvSampleAttesterTest is guest-components' switch for test guests
	// without a TEE: set (to anything), auto-detection that finds no TEE
	// falls back to the sample attester instead of failing.
	EnvSampleAttesterTest = "AA_SAMPLE_ATTESTER_TEST"
	DefaultCDHSocket      = "unix:///run/confidential-containers/cdh.sock"
	DefaultAASocket       = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
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
	CachePlugins []string
	KBSCerts     [][]byte // extra PEM roots for the KBS connection
	Attester     string   // auto | tdx | snp | az-snp-vtpm | az-tdx-vtpm | sample
	// SampleFallback: with Attester auto and no TEE, use the sample
	// attester (AA_SAMPLE_ATTESTER_TEST, test guests only).
	SampleFallback bool
	KeyAlgorithm   string // kbsclient.ParseKeyAlgorithm names
	Bind           string
	CacheTTL       time.Duration
	CacheMaxByte   int64
	CacheMaxItem   int64
	StaleIfError   time.Duration // serve the last good copy this long past its TTL when the KBS fails
	RequireHeader  string        // HTTP requests must carry this header (anti-SSRF); "" = off
	MetricsBind    string        // extra listener serving only /metrics; "" = none
	Budget         time.Duration
	LogLevel       string
	LogFormat      string        // text | json
	Features       core.Features // ASR --features route groups
	TDXEventLog    string        // a CCEL always sent in cc_eventlog; "" sends the log only once runtime events exist
	TPM            string        // Azure vTPM device or swtpm socket; "" = /dev/tpmrm0
	AzureIMDS      string        // Azure metadata service base URL; "" = http://169.254.169.254
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
	Image                        Image // cdh.toml [image]: guest image pull
	// EventLog is aa.toml [eventlog_config] enable_eventlog: the AA keeps
	// the runtime event log and ExtendRuntimeMeasurement extends.
	EventLog bool
	// InitPCR is [eventlog_config] init_pcr: the PCR events go to when a
	// request names none (17: RTMR3 on TDX).
	InitPCR uint64
	// EventLogDir holds the event log and its write-ahead file.
	EventLogDir string
	// AAAddr is the AA socket the CDH asks to measure the images it
	// pulls (cdh.toml [aa] aa_socket).
	AAAddr string
	// Warnings are non-fatal findings (unknown keys, ignored sections) for main to log.
	Warnings []string
	// Sources names, per field, the source whose value won (Describe).
	Sources map[string]string
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
	Features      string // resource | attestation | all
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
	// EventLogDir overrides eventlog.DefaultDir (tests).
	EventLogDir string
	// FromFile maps the flags the --config flag file set to that file, so
	// their source can be told apart from the command line's.
	FromFile map[string]string
	// InitDataDir is where kata writes initdata.toml, cdh.toml and aa.toml
	// from the host-bound initdata; "" → DefaultInitDataDir, "-" → none.
	// Files found there are used when the matching option is not given.
	InitDataDir string
	// Component is set by a drop-in personality ("aa" or "cdh"): it reads
	// only its own component's file from InitDataDir, as guest-components'
	// processes do. Otherwise an attestation-agent process would take its
	// KBS from initdata's cdh.toml (which outranks aa.toml) instead of
	// aa.toml's [token_configs.kbs].
	Component string
}

// Env reads an environment variable; os.LookupEnv in main, a map in tests.
type Env func(string) (string, bool)

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
			errs = append(errs, fmt.Errorf("KBS URL %q (from %s): want http(s)://host[:port]", redactURL(raw), c.KBSURLSource))
		} else if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("KBS URL %q (from %s) must not carry user info, query or fragment", redactURL(raw), c.KBSURLSource))
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
