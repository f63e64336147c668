package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
	"github.com/cdh-proxy/cdh-proxy/internal/securefile"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

// Exit statuses of get, so init containers and scripts can branch.
const (
	exitKBS      = 1 // KBS unreachable, attestation refused, bad answer
	exitDenied   = 3 // policy denied
	exitNotFound = 4 // missing (or KBS storage error)
)

// get is a one-shot fetch straight from the KBS (no daemon, no cache): for
// init containers and for debugging a setup before running the daemon.
func get(args []string, stdout, stderr io.Writer, proc Process) int {
	fs := flag.NewFlagSet("cdh-proxy get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &config.Flags{}
	kbsFlags(fs, f)
	out := fs.String("o", "", "write the secret to this file (mode 0600) instead of stdout")
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: cdh-proxy get [flags] <repo/type/tag | kbs:///repo/type/tag>

examples:
  cdh-proxy get --attester sample --kbs-url http://127.0.0.1:8080 default/akv/coco_one
  cdh-proxy get -c /run/confidential-containers/initdata/cdh.toml -o /run/secrets/key kbs:///default/key/1

exit status: 0 ok, 1 KBS/attestation failure, 2 usage, 3 policy denied, 4 not found, 78 configuration

`)
		fs.PrintDefaults()
	}
	if code, ok := parseWithFlagFile(fs, args, f); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	p, err := parseResourceArg(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "cdh-proxy get:", err)
		return 2
	}
	cfg, err := config.Load(*f, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-proxy: configuration: %v\n", err)
		return exitConfig
	}
	log := newLogger(stderr, cfg)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.Budget)
	defer cancel()
	att, err := daemon.NewAttester(ctx, cfg, proc.Hardware, log)
	if err != nil {
		fmt.Fprintln(stderr, "cdh-proxy get:", err)
		return exitCode(err)
	}
	kbs, err := daemon.NewKBSClient(cfg, att, log, nil)
	if err != nil {
		fmt.Fprintln(stderr, "cdh-proxy get:", err)
		return exitCode(err)
	}
	defer kbs.Close()
	secret, err := kbs.Resource(ctx, p)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-proxy get %s: %v\n", p, err)
		switch kbsclient.KindOf(err) {
		case kbsclient.Denied:
			return exitDenied
		case kbsclient.NotFound:
			return exitNotFound
		}
		return exitKBS
	}
	defer clear(secret)
	if *out != "" {
		if err := securefile.Write(*out, secret); err != nil {
			fmt.Fprintln(stderr, "cdh-proxy get:", err)
			return 1
		}
		return 0
	}
	if _, err := stdout.Write(secret); err != nil {
		return 1
	}
	return 0
}

// parseResourceArg accepts repo/type/tag or a kbs:/// URI.
func parseResourceArg(s string) (resource.Path, error) {
	if strings.Contains(s, "://") {
		return resource.ParseURI(s)
	}
	return resource.ParseEscaped(s)
}
