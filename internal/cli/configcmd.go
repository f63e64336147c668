package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/cdh-proxy/cdh-proxy/config"
)

// configCmd prints the effective configuration `serve` would run with,
// each value with the source that set it; nothing secret is printed.
func configCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cdh-proxy config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := serveFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: cdh-proxy config [serve flags]\n\nPrint the effective configuration of `cdh-proxy serve` with the same flags, and where each value came from.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := parseWithFlagFile(fs, args, f); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdh-proxy config: unexpected arguments %q\n", fs.Args())
		return 2
	}
	f.CredDir = envOr("CDH_PROXY_CREDENTIALS_DIR", "")
	cfg, err := config.Load(*f, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-proxy: configuration: %v\n", err)
		return exitConfig
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE")
	for _, s := range cfg.Describe() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Value, s.Source)
	}
	_ = tw.Flush()
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	return 0
}
