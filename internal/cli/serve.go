package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
)

// exitConfig is the exit status for configuration errors (as sysexits EX_CONFIG).
const exitConfig = 78

// kbsFlags registers what every KBS-talking command needs: where the KBS
// is, how to trust it, how to attest, where the operators' files are.
func kbsFlags(fs *flag.FlagSet, f *config.Flags) {
	fs.Var(config.ListFlag{Values: &f.KBSURLs}, "kbs-url", "KBS base URL, e.g. https://kbs.example:8080 (overrides AA_KBC_PARAMS and cdh.toml); repeat for further endpoints of the same KBS, tried in order when one is unavailable")
	fs.DurationVar(&f.KBSFailback, "kbs-failback", 0, "with several --kbs-url: how long an endpoint that failed is passed over before it is preferred again (default 60s)")
	fs.Var(config.ListFlag{Values: &f.KBSCerts}, "kbs-cert", "PEM file with an extra root CA for the KBS (repeatable: endpoints may have their own CAs)")
	fs.StringVar(&f.ConfigFile, "c", "", "cdh.toml to read ([kbc] url, kbs_cert, socket, [[credentials]], [log] level)")
	fs.StringVar(&f.AAConfigFile, "aa-config", "", "aa.toml to read ([token_configs.kbs] url, cert, tee_key_algorithm)")
	fs.StringVar(&f.Attester, "attester", "", "evidence source: auto (the default), tdx, snp, az-snp-vtpm, az-tdx-vtpm, or sample (development only)")
	fs.StringVar(&f.KeyAlgorithm, "tee-key-alg", "", "ephemeral TEE key: ECDH-ES+A256KW-P256 (default), ECDH-ES+A256KW-P521, RSA-OAEP-256")
	azureFlags(fs, &f.TPM, &f.AzureIMDS, &f.AzureEvidenceVersion)
	fs.StringVar(&f.TDXEventLog, "tdx-eventlog", "", "TDX: always send this firmware CCEL (e.g. /sys/firmware/acpi/tables/data/CCEL), with the runtime event log after it, as cc_eventlog; default: only once runtime events were recorded")
	fs.StringVar(&f.InitData, "initdata", "", "initdata TOML sent as init-data (default: initdata.toml in --initdata-dir when it exists)")
	fs.StringVar(&f.InitDataDir, "initdata-dir", "", "where kata writes initdata.toml, cdh.toml, aa.toml; used when -c, --aa-config, --initdata are not given (default "+config.DefaultInitDataDir+"; - for none)")
	fs.StringVar(&f.Cmdline, "cmdline", "", "kernel command line to read agent.aa_kbc_params and cdh.kbs_resources from (default /proc/cmdline; - for none)")
	fs.DurationVar(&f.Budget, "budget", 0, "total time for one request, attestation included (default 30s)")
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&f.LogFormat, "log-format", "", "text or json (default text)")
}

// azureFlags registers the Azure CVM (vTPM) settings.
func azureFlags(fs *flag.FlagSet, tpm, imds *string, version *int) {
	fs.StringVar(tpm, "tpm", "", "Azure CVMs: the vTPM (default "+azure.DefaultTPM+"; a unix socket is spoken to as swtpm's)")
	fs.StringVar(imds, "azure-imds", "", "Azure CVMs: metadata service base URL for the VCEK / TD quote (default "+azure.DefaultIMDS+"; never proxied)")
	fs.IntVar(version, "azure-evidence-version", 0, "Azure CVMs: evidence version, 2 for Trustee >= 0.21, 1 for Trustee 0.18-0.20 (default 2)")
}

func serveFlags(fs *flag.FlagSet) *config.Flags {
	f := &config.Flags{}
	kbsFlags(fs, f)
	fs.StringVar(&f.Bind, "bind", "", "HTTP listen address (default "+config.DefaultBind+")")
	fs.Func("cache-ttl", "how long a fetched secret is served from memory; 0 disables caching (default 60s). Rotated secrets reach workloads within this time", func(s string) error {
		d, err := time.ParseDuration(s)
		f.CacheTTL = &d
		return err
	})
	fs.Int64Var(&f.CacheMaxByte, "cache-max-bytes", 0, "bound on cached plaintext (default 64 MiB)")
	fs.Int64Var(&f.CacheMaxItem, "cache-max-entry", 0, "largest secret that is cached; larger ones are served uncached (default 1 MiB)")
	fs.DurationVar(&f.StaleIfError, "stale-if-error", 0, "when the KBS fails, serve the last good copy up to this long past its TTL, marked X-Cache: STALE (default off; never after a policy denial or 404)")
	fs.StringVar(&f.MetricsBind, "metrics-bind", "", "also serve /metrics (only) on this address, e.g. 0.0.0.0:9106 for an in-cluster scraper; metrics hold no secrets")
	fs.StringVar(&f.RequireHeader, "require-header", "", "refuse HTTP requests without this header (e.g. X-CDH-Request), like Vault's X-Vault-Request: anti-SSRF")
	fs.Var(config.ListFlag{Values: &f.CachePlugins}, "cache-plugin", "cache answers of this KBS plugin like resources (repeatable); plugin answers are not cached by default, as they may be per-call credentials")
	fs.StringVar(&f.Features, "features", "", "HTTP route groups, as api-server-rest: resource (default), attestation (/aa/evidence, /aa/token) or all")
	fs.Func("cdh-socket", "also serve the CDH ttrpc API on this socket, e.g. "+config.DefaultCDHSocket+" (default: cdh.toml socket if -c, else off)", func(s string) error { f.CDHSocket = &s; return nil })
	fs.Func("aa-socket", "also serve the AA ttrpc API on this socket, e.g. "+config.DefaultAASocket+" (default off)", func(s string) error { f.AASocket = &s; return nil })
	return f
}

const serveUsage = `usage: cdh-proxy serve [flags]

Serve KBS secrets on 127.0.0.1:8006 (and, when asked, the CDH/AA ttrpc sockets).

examples:
  cdh-proxy serve --kbs-url https://kbs.example:8080 --kbs-cert /etc/kbs-ca.pem
  cdh-proxy serve -c /run/confidential-containers/initdata/cdh.toml --cache-ttl 30s
  cdh-proxy serve --config /etc/cdh-proxy.toml      # flag-name = value pairs
  cdh-proxy serve --attester sample --kbs-url http://127.0.0.1:8080   # development only

flags (each can also be set in the --config file; the command line wins):
`

func serve(args []string, stderr io.Writer, p Process) int {
	f, code, ok := parseServeFlags("serve", serveUsage, args, stderr)
	if !ok {
		return code
	}
	// Sockets are served when configured (--cdh-socket/--aa-socket, cdh.toml socket).
	return runDaemon(f, stderr, p, daemon.ServeParts)
}

func newLogger(w io.Writer, cfg *config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// parseServeFlags parses serve's flags (and --config) for the command
// name; it returns the exit status when the command should stop.
func parseServeFlags(name, usage string, args []string, stderr io.Writer) (*config.Flags, int, bool) {
	fs := flag.NewFlagSet("cdh-proxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := serveFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if code, ok := parseWithFlagFile(fs, args, f); !ok {
		return nil, code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdh-proxy %s: unexpected arguments %q\n", name, fs.Args())
		return nil, 2, false
	}
	return f, 0, true
}

// parseWithFlagFile parses args, then fills unset flags from --config.
// The flags the file set are recorded in f, so their source can be shown.
func parseWithFlagFile(fs *flag.FlagSet, args []string, f *config.Flags) (int, bool) {
	cfgFile := fs.String("config", "", "file of flag-name = value pairs (TOML) for flags not given on the command line")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if *cfgFile != "" {
		applied, err := config.ApplyFlagFile(fs, *cfgFile)
		if err != nil {
			fmt.Fprintln(fs.Output(), "cdh-proxy:", err)
			return exitConfig, false
		}
		f.FromFile = map[string]string{}
		for _, name := range applied {
			f.FromFile[name] = *cfgFile
		}
	}
	return 0, true
}

// ServeConfig is the configuration `cdh-proxy serve args…` would run with,
// env standing for the process environment: for running the daemon in
// process (tests).
func ServeConfig(args []string, env config.Env) (*config.Config, error) {
	fs := flag.NewFlagSet("cdh-proxy serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := serveFlags(fs)
	cfgFile := fs.String("config", "", "")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *cfgFile != "" {
		applied, err := config.ApplyFlagFile(fs, *cfgFile)
		if err != nil {
			return nil, err
		}
		f.FromFile = map[string]string{}
		for _, name := range applied {
			f.FromFile[name] = *cfgFile
		}
	}
	if dir, ok := env("CDH_PROXY_CREDENTIALS_DIR"); ok {
		f.CredDir = dir
	}
	if dir, ok := env("CDH_PROXY_EVENTLOG_DIR"); ok {
		f.EventLogDir = dir
	}
	return config.Load(*f, env)
}
