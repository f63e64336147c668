// Command cdh-proxy hands KBS secrets to workloads in a confidential VM.
// main only wires: the commands live in internal/cli, the components in
// internal/daemon, and this binary passes them the real hardware.
package main

import (
	"os"

	"github.com/cdh-proxy/cdh-proxy/internal/cli"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	cli.SetupProcess()
	os.Exit(cli.Main(os.Args[0], os.Args[1:], os.Stdout, os.Stderr, cli.Process{Version: version, Hardware: daemon.Hardware{}}))
}
