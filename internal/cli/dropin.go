package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
)

// The drop-in personalities: invoked (by symlink or copy) under the names
// kata-agent launches, cdh-proxy accepts exactly their flags
// (spec guest-compat.md, "How kata-agent starts the guest components").

// cdhMain is `confidential-data-hub [-c cdh.toml]`: the CDH socket only.
func cdhMain(args []string, stderr io.Writer, p Process) int {
	fs := flag.NewFlagSet("confidential-data-hub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &config.Flags{Component: "cdh"}
	fs.StringVar(&f.ConfigFile, "c", "", "cdh.toml")
	attesterFlag(fs, f)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	sock := config.DefaultCDHSocket
	if f.ConfigFile != "" {
		if cdh, _, err := config.LoadCDHFile(f.ConfigFile); err == nil && cdh.Socket != "" {
			sock = cdh.Socket
		}
	}
	f.CDHSocket = &sock
	return dropIn(f, daemon.Parts{CDH: true}, stderr, p)
}

// aaMain is `attestation-agent --attestation_sock URI [-c aa.toml]
// [--initdata-toml F]` (upstream also takes -a, --config-file,
// -i/--initdata-digest, -t): the AA socket only.
func aaMain(args []string, stderr io.Writer, p Process) int {
	fs := flag.NewFlagSet("attestation-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &config.Flags{Component: "aa"}
	sock := config.DefaultAASocket
	fs.StringVar(&sock, "attestation_sock", sock, "AA ttrpc socket (unix:// URI)")
	fs.StringVar(&sock, "a", sock, "alias of --attestation_sock")
	fs.StringVar(&f.AAConfigFile, "c", "", "aa.toml")
	fs.StringVar(&f.AAConfigFile, "config-file", "", "alias of -c")
	fs.StringVar(&f.InitData, "initdata-toml", "", "initdata TOML")
	var digest, timeout string
	fs.StringVar(&digest, "initdata-digest", "", "accepted for compatibility; the KBS checks the initdata binding")
	fs.StringVar(&digest, "i", "", "alias of --initdata-digest")
	fs.StringVar(&timeout, "t", "", "accepted for compatibility")
	attesterFlag(fs, f)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	f.AASocket = &sock
	return dropIn(f, daemon.Parts{AA: true}, stderr, p)
}

// asrMain is `api-server-rest [-b ADDR] [--features resource|attestation|all]
// [--cdh_addr URI] [--aa_addr URI]`: HTTP, forwarding to the CDH and AA
// sockets of the other two processes.
func asrMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("api-server-rest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bind := config.DefaultBind
	fs.StringVar(&bind, "bind", bind, "listen address")
	fs.StringVar(&bind, "b", bind, "alias of --bind")
	features := fs.String("features", "resource", "resource, attestation or all")
	cdhAddr := fs.String("cdh_addr", config.DefaultCDHSocket, "CDH socket")
	aaAddr := fs.String("aa_addr", config.DefaultAASocket, "AA socket")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	feats, err := core.ParseFeatures(*features)
	if err != nil {
		fmt.Fprintf(stderr, "api-server-rest: unknown --features %q (want resource, attestation or all)\n", *features)
		return 1
	}
	log := newLogger(stderr, &config.Config{LogLevel: "info", LogFormat: envOr("CDH_PROXY_LOG_FORMAT", "text")})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := (daemon.Forwarder{Bind: bind, Features: feats, CDHAddr: *cdhAddr, AAAddr: *aaAddr, Logger: log}).Run(ctx); err != nil {
		log.Error("exiting", "err", err)
		return exitCode(err)
	}
	return 0
}

// attesterFlag lets a drop-in install pick the sample attester for
// development images; production images leave it at auto.
func attesterFlag(fs *flag.FlagSet, f *config.Flags) {
	fs.StringVar(&f.Attester, "cdh-proxy-attester", "", "cdh-proxy extension: auto (the default), tdx, snp or sample")
}

func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2, false
	}
	return 0, true
}

// dropIn runs a drop-in personality. kata passes only upstream's flags, so
// the test seams that serve has as flags come from the environment here.
func dropIn(f *config.Flags, parts daemon.Parts, stderr io.Writer, p Process) int {
	f.LogFormat = envOr("CDH_PROXY_LOG_FORMAT", "")
	f.Cmdline = envOr("CDH_PROXY_CMDLINE", "")
	return runDaemon(f, stderr, p, func(*config.Config) daemon.Parts { return parts })
}

// runDaemon loads config (with the environment overrides operators use,
// e.g. AA_KBC_PARAMS) and runs the parts choose picks for it.
func runDaemon(f *config.Flags, stderr io.Writer, p Process, choose func(*config.Config) daemon.Parts) int {
	f.CredDir = envOr("CDH_PROXY_CREDENTIALS_DIR", "")  // test seam: credentials outside /run
	f.EventLogDir = envOr("CDH_PROXY_EVENTLOG_DIR", "") // test seam: the event log outside /run
	cfg, err := config.Load(*f, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-proxy: configuration: %v\n", err)
		return exitConfig
	}
	log := newLogger(stderr, cfg)
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(ctx, cfg, choose(cfg), daemon.Options{Hardware: p.Hardware, Logger: log})
	if err == nil {
		err = d.Run(ctx)
	}
	if err != nil {
		log.Error("exiting", "err", err)
		return exitCode(err)
	}
	return 0
}

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok {
		return v
	}
	return def
}

func exitCode(err error) int {
	var ce daemon.ConfigError
	if errors.As(err, &ce) {
		return exitConfig
	}
	return 1
}
