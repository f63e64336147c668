// Command cdh-proxy hands KBS secrets to workloads in a confidential VM.
// main only dispatches; each subcommand lives in its own file.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/google/logger"
)

// defaultGCPercent is the GC target unless GOGC is set.
const defaultGCPercent = 50

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// go-tdx-guest's client package points google/logger at stdout in its
	// init; our stdout carries evidence JSON, so send library logs nowhere.
	logger.Init("", false, false, io.Discard)
	// SIGHUP's default action would kill the daemon (a closed controlling
	// terminal, a careless `kill -HUP`); configuration is not reloaded.
	signal.Ignore(syscall.SIGHUP)
	// A confidential VM's memory is encrypted and scarce, and the warm path
	// allocates nothing: collect at 50 % heap growth instead of 100 %
	// (measured: 10k cached secrets in ~22 MiB RSS instead of ~26 MiB; the
	// price is GC CPU of ~3 % instead of ~1 % at 30k warm hits/s, see
	// BENCHMARKS.md). GOGC in the environment still wins.
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(defaultGCPercent)
	}
	// Installed under guest-components' names, behave as that component.
	switch filepath.Base(os.Args[0]) {
	case "confidential-data-hub":
		os.Exit(cdhMain(os.Args[1:], os.Stderr))
	case "attestation-agent":
		os.Exit(aaMain(os.Args[1:], os.Stderr))
	case "api-server-rest":
		os.Exit(asrMain(os.Args[1:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "evidence":
		return evidence(args, stdout, stderr)
	case "get":
		return get(args, stdout, stderr)
	case "version", "--version":
		printVersion(stdout)
		return 0
	case "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "cdh-proxy: unknown command %q\n\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: cdh-proxy [serve] [flags]   serve secrets on 127.0.0.1:8006
       cdh-proxy get [flags] <repo/type/tag | kbs:///…>      fetch one secret from the KBS to stdout
       cdh-proxy evidence [--attester …] [--runtime-data S]   print TEE evidence JSON
       cdh-proxy version
       cdh-proxy serve -h          list the serve flags
`)
}
