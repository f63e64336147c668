// Command cdh-proxy-fakehw is cdh-proxy on simulated hardware, for the
// end-to-end tests and the README's evidence examples: the same commands
// (internal/cli) with the configfs-tsm of a test/fakehw simulator saved in
// $CDH_PROXY_FAKEHW_DIR for $CDH_PROXY_FAKEHW (tdx or snp; for tdx also
// its runtime registers and CCEL there), and the real /dev, vTPM and
// firmware log hidden. It is never shipped: the production binary,
// cmd/cdh-proxy, contains no simulator.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cdh-proxy/cdh-proxy/internal/cli"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func main() {
	cli.SetupProcess()
	hw, err := hardware()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cdh-proxy-fakehw:", err)
		os.Exit(1)
	}
	os.Exit(cli.Main(os.Args[0], os.Args[1:], os.Stdout, os.Stderr, cli.Process{Version: "fakehw", Hardware: hw}))
}

// hardware is the simulator named by the environment; without one, a
// machine with no TEE at all (never the test machine's own devices).
func hardware() (daemon.Hardware, error) {
	noDev := filepath.Join(os.TempDir(), "cdh-proxy-fakehw-no-dev")
	hw := daemon.Hardware{TSM: fakehw.NoConfigFS(), DevDir: noDev, TPM: filepath.Join(noDev, "tpmrm0"), CCEL: filepath.Join(noDev, "CCEL")}
	tee := os.Getenv("CDH_PROXY_FAKEHW")
	if tee == "" {
		return hw, nil
	}
	dir := os.Getenv("CDH_PROXY_FAKEHW_DIR")
	fs, err := fakehw.LoadConfigFS(tee, dir)
	if err != nil {
		return hw, err
	}
	hw.TSM = fs
	if tee == "tdx" {
		// The TD's runtime registers and firmware log, shared by the
		// processes of one simulated guest (fakehw.RTMR.Firmware).
		hw.RTMR, hw.CCEL = fakehw.RTMR{Dir: dir}, filepath.Join(dir, "CCEL")
	}
	return hw, nil
}
