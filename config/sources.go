package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

// layer is what one source says: a partial Config and, for each field it
// sets, where exactly the value came from.
type layer struct {
	c   Config
	set map[string]string // field name → source, e.g. "cdh.toml /x [kbc] url"
}

func newLayer() layer { return layer{set: map[string]string{}} }

// from marks field as set by this source.
func (l *layer) from(field, source string) { l.set[field] = source }

// accumulated fields gather values from every source instead of taking the
// winner's: all extra KBS roots are trusted, all credentials written.
var accumulated = map[string]bool{"KBSCerts": true, "Credentials": true}

// Load reads every source and merges them. Precedence, highest first:
//
//  1. command-line flags (and the --config flag file, for flags not given)
//  2. the environment (AA_KBC_PARAMS, SKIP_SEALED_SECRET_VERIFICATION)
//  3. cdh.toml (-c, or the initdata directory's)
//  4. aa.toml (--aa-config, or the initdata directory's)
//  5. the kernel command line
//  6. defaults
//
// For each field the highest source that sets it wins; extra KBS roots and
// credentials are gathered from all. The KBS URL list comes whole from one
// source, and a lower source naming other URLs draws a warning.
func Load(f Flags, env Env) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	f, found := discoverFiles(f)
	flags, err := fromFlags(f, found)
	if err != nil {
		return nil, err
	}
	layers := []layer{flags}
	e, err := fromEnv(env)
	if err != nil {
		return nil, err
	}
	layers = append(layers, e)
	var warns []string
	if f.ConfigFile != "" {
		l, w, err := fromCDHFile(f.ConfigFile)
		if err != nil {
			return nil, err
		}
		layers, warns = append(layers, l), append(warns, w...)
	}
	if f.AAConfigFile != "" {
		l, w, err := fromAAFile(f.AAConfigFile)
		if err != nil {
			return nil, err
		}
		layers, warns = append(layers, l), append(warns, w...)
	}
	if f.Cmdline != "-" {
		l, err := fromCmdline(cmp.Or(f.Cmdline, DefaultCmdline), f.Cmdline != "")
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	layers = append(layers, defaults())
	c := merge(layers)
	c.Warnings = append(warns, c.Warnings...)
	if v, ok := env(EnvImageAuthURI); ok && v != "" {
		if err := checkImageURI(v); err != nil {
			return nil, fmt.Errorf("%s %q: %w", EnvImageAuthURI, v, err)
		}
		c.Image.AuthURI = v
		c.Sources["Image"] += " + " + EnvImageAuthURI
	}
	if len(c.KBSURLs) == 0 {
		return nil, errors.New("no KBS URL: pass --kbs-url, set AA_KBC_PARAMS=cc_kbc::<url>, give a cdh.toml with [kbc] url (-c) or an aa.toml with [token_configs.kbs] url, or boot with agent.aa_kbc_params")
	}
	c.KBSURL = c.KBSURLs[0]
	c.KBSURLSource = c.Sources["KBSURLs"]
	return c, c.Validate()
}

// merge applies layers, highest precedence first, into one Config and
// records each field's source.
func merge(layers []layer) *Config {
	c := &Config{Sources: map[string]string{}}
	dst := reflect.ValueOf(c).Elem()
	typ := dst.Type()
	for i := range typ.NumField() {
		name := typ.Field(i).Name
		var sources []string
		for _, l := range layers {
			src, ok := l.set[name]
			if !ok {
				continue
			}
			v := reflect.ValueOf(l.c).Field(i)
			if accumulated[name] {
				dst.Field(i).Set(reflect.AppendSlice(dst.Field(i), v))
				sources = append(sources, src)
				continue
			}
			if len(sources) == 0 {
				dst.Field(i).Set(v)
				sources = append(sources, src)
			} else if name == "KBSURLs" && !slices.Equal(v.Interface().([]string), c.KBSURLs) {
				c.Warnings = append(c.Warnings, fmt.Sprintf("KBS URL %s from %s overrides %s from %s",
					quoteList(c.KBSURLs), sources[0], quoteList(v.Interface().([]string)), src))
			}
		}
		if len(sources) > 0 {
			c.Sources[name] = strings.Join(sources, " + ")
		}
	}
	return c
}

// discoverFiles fills the cdh.toml, aa.toml and initdata paths from the
// initdata directory kata writes, for those not given, and says which.
func discoverFiles(f Flags) (Flags, map[string]string) {
	found := map[string]string{}
	if f.InitDataDir == "-" {
		return f, found
	}
	dir := cmp.Or(f.InitDataDir, DefaultInitDataDir)
	for _, d := range []struct {
		dst       *string
		name      string
		component string
	}{{&f.ConfigFile, "cdh.toml", "cdh"}, {&f.AAConfigFile, "aa.toml", "aa"}, {&f.InitData, "initdata.toml", ""}} {
		if f.Component != "" && d.component != "" && d.component != f.Component {
			continue
		}
		if *d.dst == "" {
			if p := filepath.Join(dir, d.name); fileExists(p) {
				*d.dst = p
				found[d.name] = "--initdata-dir " + dir
			}
		}
	}
	return f, found
}

// fromFlags is the command line (and the --config flag file).
func fromFlags(f Flags, found map[string]string) (layer, error) {
	l := newLayer()
	flag := func(name string) string {
		if file, ok := f.FromFile[name]; ok {
			return "--config " + file
		}
		return "--" + name
	}
	if len(f.KBSURLs) > 0 {
		l.c.KBSURLs = f.KBSURLs
		l.from("KBSURLs", flag("kbs-url"))
	}
	for _, certFile := range f.KBSCerts {
		pem, err := os.ReadFile(certFile)
		if err != nil {
			return l, fmt.Errorf("--kbs-cert: %w", err)
		}
		l.c.KBSCerts = append(l.c.KBSCerts, pem)
		l.from("KBSCerts", flag("kbs-cert"))
	}
	str := func(field, name, v string) {
		if v != "" {
			reflect.ValueOf(&l.c).Elem().FieldByName(field).SetString(v)
			l.from(field, flag(name))
		}
	}
	str("Attester", "attester", f.Attester)
	str("KeyAlgorithm", "tee-key-alg", f.KeyAlgorithm)
	str("Bind", "bind", f.Bind)
	str("MetricsBind", "metrics-bind", f.MetricsBind)
	str("LogLevel", "log-level", strings.ToLower(f.LogLevel))
	str("LogFormat", "log-format", f.LogFormat)
	str("TDXEventLog", "tdx-eventlog", f.TDXEventLog)
	str("TPM", "tpm", f.TPM)
	str("AzureIMDS", "azure-imds", f.AzureIMDS)
	str("CredDir", "CDH_PROXY_CREDENTIALS_DIR", f.CredDir)
	str("EventLogDir", "CDH_PROXY_EVENTLOG_DIR", f.EventLogDir)
	if f.RequireHeader != "" {
		l.c.RequireHeader = http.CanonicalHeaderKey(f.RequireHeader)
		l.from("RequireHeader", flag("require-header"))
	}
	if f.Features != "" {
		features, err := core.ParseFeatures(f.Features)
		if err != nil {
			return l, err
		}
		l.c.Features = features
		l.from("Features", flag("features"))
	}
	if f.CacheTTL != nil {
		l.c.CacheTTL = *f.CacheTTL
		l.from("CacheTTL", flag("cache-ttl"))
	}
	for _, d := range []struct {
		field, name string
		set         bool
	}{
		{"CacheMaxByte", "cache-max-bytes", f.CacheMaxByte != 0},
		{"CacheMaxItem", "cache-max-entry", f.CacheMaxItem != 0},
		{"Budget", "budget", f.Budget != 0},
		{"StaleIfError", "stale-if-error", f.StaleIfError != 0},
		{"KBSFailback", "kbs-failback", f.KBSFailback != 0},
		{"AzureEvidenceVersion", "azure-evidence-version", f.AzureEvidenceVersion != 0},
		{"CachePlugins", "cache-plugin", len(f.CachePlugins) > 0},
	} {
		if d.set {
			l.from(d.field, flag(d.name))
		}
	}
	l.c.CacheMaxByte, l.c.CacheMaxItem, l.c.Budget = f.CacheMaxByte, f.CacheMaxItem, f.Budget
	l.c.StaleIfError, l.c.KBSFailback, l.c.AzureEvidenceVersion = f.StaleIfError, f.KBSFailback, f.AzureEvidenceVersion
	l.c.CachePlugins = f.CachePlugins
	for _, sock := range []struct {
		flag  *string
		dst   *string
		field string
		name  string
	}{{f.CDHSocket, &l.c.CDHSocket, "CDHSocket", "cdh-socket"}, {f.AASocket, &l.c.AASocket, "AASocket", "aa-socket"}} {
		if sock.flag != nil {
			*sock.dst = *sock.flag
			if *sock.flag == "none" {
				*sock.dst = ""
			}
			l.from(sock.field, flag(sock.name))
		}
	}
	if f.InitData != "" {
		data, err := LoadInitData(f.InitData)
		if err != nil {
			return l, err
		}
		l.c.InitDataPath, l.c.InitData = f.InitData, data
		src := cmp.Or(found["initdata.toml"], flag("initdata"))
		l.from("InitDataPath", src)
		l.from("InitData", src)
	}
	return l, nil
}

// fromEnv is the environment operators already set for guest-components.
func fromEnv(env Env) (layer, error) {
	l := newLayer()
	if v, ok := env(EnvKBCParams); ok && v != "" {
		u, err := ParseKBCParams(v)
		if err != nil {
			return l, fmt.Errorf("%s: %w", EnvKBCParams, err)
		}
		l.c.KBSURLs = []string{u}
		l.from("KBSURLs", EnvKBCParams)
	}
	if _, ok := env(EnvSampleAttesterTest); ok {
		l.c.SampleFallback = true
		l.from("SampleFallback", EnvSampleAttesterTest)
	}
	if v, ok := env(EnvSkipSealedVerify); ok && strings.EqualFold(v, "true") {
		l.c.SkipSealedSecretVerification = true
		l.from("SkipSealedSecretVerification", EnvSkipSealedVerify)
	}
	return l, nil
}

// fromCDHFile is cdh.toml as confidential-data-hub reads it.
func fromCDHFile(path string) (layer, []string, error) {
	l := newLayer()
	cdh, warns, err := LoadCDHFile(path)
	if err != nil {
		return l, nil, err
	}
	l.c.KBSURLs = cdh.KBC.URL
	l.from("KBSURLs", path+" [kbc] url")
	if cdh.KBC.KBSCert != "" {
		l.c.KBSCerts = [][]byte{[]byte(cdh.KBC.KBSCert)}
		l.from("KBSCerts", path+" [kbc] kbs_cert")
	}
	if cdh.Log.Level != "" {
		l.c.LogLevel = strings.ToLower(cdh.Log.Level)
		l.from("LogLevel", path+" [log] level")
	}
	if cdh.Socket != "" {
		l.c.CDHSocket = cdh.Socket
		l.from("CDHSocket", path+" socket")
	}
	if cdh.SkipSealedSecretVerification {
		l.c.SkipSealedSecretVerification = true
		l.from("SkipSealedSecretVerification", path+" skip_sealed_secret_verification")
	}
	for _, cr := range cdh.Credentials {
		l.c.Credentials = append(l.c.Credentials, Credential{ResourceURI: cr.ResourceURI, Path: cr.Path, Source: path})
		l.from("Credentials", path+" [[credentials]]")
	}
	l.c.Image = cdh.Image
	l.from("Image", path+" [image]")
	if cdh.AA.AASocket != "" {
		l.c.AAAddr = cdh.AA.AASocket
		l.from("AAAddr", path+" [aa] aa_socket")
	}
	return l, warns, nil
}

// fromAAFile is aa.toml as attestation-agent reads it.
func fromAAFile(path string) (layer, []string, error) {
	l := newLayer()
	aa, warns, err := LoadAAFile(path)
	if err != nil {
		return l, nil, err
	}
	if u := aa.TokenConfigs.KBS.URL; u != "" {
		l.c.KBSURLs = []string{u}
		l.from("KBSURLs", path+" [token_configs.kbs] url")
	}
	if aa.TokenConfigs.KBS.Cert != "" {
		l.c.KBSCerts = [][]byte{[]byte(aa.TokenConfigs.KBS.Cert)}
		l.from("KBSCerts", path+" [token_configs.kbs] cert")
	}
	if alg := cmp.Or(aa.TokenConfigs.KBS.TeeKeyAlgorithm, aa.TeeKeyAlgorithm); alg != "" {
		l.c.KeyAlgorithm = alg
		l.from("KeyAlgorithm", path+" tee_key_algorithm")
	}
	if aa.Log.Level != "" {
		l.c.LogLevel = strings.ToLower(aa.Log.Level)
		l.from("LogLevel", path+" [log] level")
	}
	if v := aa.EventlogConfig.EnableEventlog; v != nil {
		l.c.EventLog = *v
		l.from("EventLog", path+" [eventlog_config] enable_eventlog")
	}
	if v := aa.EventlogConfig.InitPCR; v != nil {
		l.c.InitPCR = *v
		l.from("InitPCR", path+" [eventlog_config] init_pcr")
	}
	return l, warns, nil
}

// fromCmdline is the kernel command line; a missing file is only an error
// when it was named explicitly.
func fromCmdline(path string, explicit bool) (layer, error) {
	l := newLayer()
	data, err := os.ReadFile(path)
	if err != nil {
		if explicit {
			return l, fmt.Errorf("kernel cmdline: %w", err)
		}
		return l, nil
	}
	cl, err := ParseCmdline(string(data))
	if err != nil {
		return l, err
	}
	if cl.KBCParams != "" {
		u, err := ParseKBCParams(cl.KBCParams)
		if err != nil {
			return l, fmt.Errorf("%s agent.aa_kbc_params: %w", path, err)
		}
		l.c.KBSURLs = []string{u}
		l.from("KBSURLs", path+" agent.aa_kbc_params")
	}
	if len(cl.Credentials) > 0 {
		l.c.Credentials = cl.Credentials
		l.from("Credentials", path+" cdh.kbs_resources")
	}
	return l, nil
}

// defaults are what no source set (design.md, "Behaviour that users expect").
func defaults() layer {
	l := newLayer()
	l.c = Config{
		Attester: "auto", Bind: DefaultBind, CacheTTL: DefaultCacheTTL, CacheMaxByte: DefaultCacheMaxBytes,
		CacheMaxItem: DefaultCacheMaxEntry, Budget: DefaultBudget, LogLevel: "info", LogFormat: "text",
		Features: core.Features{Resource: true}, CredDir: DefaultCredentialsDir, AzureEvidenceVersion: 2,
		KBSFailback: kbsclient.DefaultFailbackAfter,
		Image:       Image{WorkDir: DefaultImageWorkDir, MaxConcurrentLayerDownloads: DefaultImageLayerDownloads},
		InitPCR:     eventlog.DefaultInitPCR, EventLogDir: eventlog.DefaultDir, AAAddr: DefaultAASocket,
	}
	for _, f := range []string{"Attester", "Bind", "CacheTTL", "CacheMaxByte", "CacheMaxItem", "Budget", "LogLevel", "LogFormat", "Features", "CredDir", "AzureEvidenceVersion", "KBSFailback", "Image", "InitPCR", "EventLogDir", "AAAddr"} {
		l.from(f, "default")
	}
	return l
}
