package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
)

// evidence prints the evidence JSON for runtime data, as AA's GetEvidence
// and ASR's /aa/evidence would return it: a debugging aid for checking that
// the hardware path works before involving a KBS.
func evidence(args []string, stdout, stderr io.Writer, p Process) int {
	fs := flag.NewFlagSet("cdh-proxy evidence", flag.ContinueOnError)
	fs.SetOutput(stderr)
	att := fs.String("attester", "auto", "auto, tdx, snp, az-snp-vtpm, az-tdx-vtpm or sample")
	rd := fs.String("runtime-data", "", "runtime data bound into the evidence (raw bytes, zero-padded to 64 for TDX/SNP)")
	enc := fs.String("encoding", "", "set to base64 when --runtime-data is URL-safe base64 without padding")
	eventLog := fs.String("tdx-eventlog", "", "TDX: always send this firmware CCEL, with the runtime event log after it, as cc_eventlog")
	var az azure.Options
	var azVersion int
	azureFlags(fs, &az.TPM, &az.IMDS, &azVersion)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: cdh-proxy evidence [--attester auto|tdx|snp|az-snp-vtpm|az-tdx-vtpm|sample] [--runtime-data S [--encoding base64]]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	data := []byte(*rd)
	if *enc == "base64" {
		d, err := base64.RawURLEncoding.DecodeString(*rd)
		if err != nil {
			fmt.Fprintln(stderr, "cdh-proxy evidence: --runtime-data is not URL-safe base64 without padding")
			return 2
		}
		data = d
	} else if *enc != "" {
		fmt.Fprintf(stderr, "cdh-proxy evidence: unknown --encoding %q\n", *enc)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg := &config.Config{Attester: *att, TDXEventLog: *eventLog, TPM: az.TPM, AzureIMDS: az.IMDS, AzureEvidenceVersion: azVersion}
	a, err := daemon.NewAttester(ctx, cfg, p.Hardware, log)
	if err != nil {
		fmt.Fprintln(stderr, "cdh-proxy evidence:", err)
		return exitConfig
	}
	ev, err := a.Evidence(ctx, data)
	if err != nil {
		fmt.Fprintln(stderr, "cdh-proxy evidence:", err)
		if errors.Is(err, attester.ErrReportDataTooLong) {
			return 2
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", ev)
	return 0
}
