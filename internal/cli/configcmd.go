package cli

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/cdh-proxy/cdh-proxy/config"
)

const configUsage = "usage: cdh-proxy config [serve flags]\n\nPrint the effective configuration of `cdh-proxy serve` with the same flags, and where each value came from.\n\n"

// configCmd prints the effective configuration `serve` would run with,
// each value with the source that set it; nothing secret is printed.
func configCmd(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseServeFlags("config", configUsage, args, stderr)
	if !ok {
		return code
	}
	f.CredDir = envOr("CDH_PROXY_CREDENTIALS_DIR", "")
	f.EventLogDir = envOr("CDH_PROXY_EVENTLOG_DIR", "")
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
