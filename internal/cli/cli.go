// Package cli is cdh-proxy's commands: serve, get, evidence, config, version and the
// drop-in personalities (confidential-data-hub, attestation-agent,
// api-server-rest) chosen by argv[0]. It parses flags into a config.Config
// and hands it to package daemon; the hardware comes from its caller, so
// the production binary (cmd/cdh-proxy) and the simulated-hardware test
// binary (test/cmd/cdh-proxy-fakehw) differ only in what they pass.
package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/google/logger"
	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
)

// Process is what main hands the commands.
type Process struct {
	Version  string          // release version, set at build time
	Hardware daemon.Hardware // where the attesters find the TEE
}

// SetupProcess makes the process-wide settings every cdh-proxy binary
// wants. Only a main calls it.
func SetupProcess() {
	noHugePages()
	// go-tdx-guest's client package points google/logger at stdout in its
	// init; our stdout carries evidence JSON, so send library logs nowhere.
	logger.Init("", false, false, io.Discard)
	// SIGHUP's default action would kill the daemon (a closed controlling
	// terminal, a careless `kill -HUP`); configuration is not reloaded.
	signal.Ignore(syscall.SIGHUP)
	// The GC target stays Go's 100 % (GOGC sets it). cdh-proxy's live heap
	// is tiny, so the GC runs at its minimum goal (4 MiB × GOGC/100): at
	// 50 % it ran ~74 times a second under warm-hit load and cost ~20 % of
	// the throughput, for ~4 MiB less RSS with 10k cached secrets
	// (BENCHMARKS.md, P1 and P5 give both). GOGC=50 remains the setting
	// for memory-tight VMs (docs/configuration.md).
}

// noHugePages restarts the process once with transparent huge pages
// disabled when the kernel runs THP "always" (Debian's guest kernel does).
// There the Go heap's first touches, during package initialisation, fault
// in whole 2 MiB pages the runtime believes it never touched and so never
// returns: each drop-in process kept ~3.5 MiB more anonymous memory for a
// heap well under 2 MiB (measured in the guest test bed: BENCHMARKS.md,
// "Drop-in trio in a guest"). The prctl flag survives execve, so the new
// image's runtime starts without huge pages; disabling them only now would
// leave the pages already faulted in. Go's own switch (GODEBUG=disablethp)
// is environment-only, and kata-agent sets the environment. On any
// failure the process goes on as it is.
func noHugePages() {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || !bytes.Contains(mode, []byte("[always]")) {
		return
	}
	if off, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0); err != nil || off != 0 {
		return // already off (this is the restarted process), or unknown
	}
	if unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0) != nil {
		return
	}
	_ = unix.Exec("/proc/self/exe", os.Args, os.Environ())
}

// Main runs the command argv0 and args name and returns the exit status.
// Installed under guest-components' names, cdh-proxy behaves as that
// component.
func Main(argv0 string, args []string, stdout, stderr io.Writer, p Process) int {
	switch filepath.Base(argv0) {
	case "confidential-data-hub":
		return cdhMain(args, stderr, p)
	case "attestation-agent":
		return aaMain(args, stderr, p)
	case "api-server-rest":
		return asrMain(args, stderr)
	}
	return run(args, stdout, stderr, p)
}

func run(args []string, stdout, stderr io.Writer, p Process) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr, p)
	case "evidence":
		return evidence(args, stdout, stderr, p)
	case "get":
		return get(args, stdout, stderr, p)
	case "config":
		return configCmd(args, stdout, stderr)
	case "version", "--version":
		printVersion(stdout, p.Version)
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
       cdh-proxy config [serve flags]   print the effective configuration and each value's source
       cdh-proxy version
       cdh-proxy serve -h          list the serve flags
`)
}
