// Package detect finds the TEE this guest runs on and builds its attester:
// configfs-tsm first (TDX or SEV-SNP by its provider), then an Azure CVM's
// vTPM (its HCL report names SNP or TDX), then the TDX and SEV-SNP device
// nodes. The sample attester is only ever built when asked for by name, or
// when no TEE is found and the environment asks for that fallback
// (AA_SAMPLE_ATTESTER_TEST, as guest-components' test guests set it).
package detect

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/google/go-configfs-tsm/configfs/configfsi"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/internal/tsm"
	"github.com/cdh-proxy/cdh-proxy/attester/sample"
	"github.com/cdh-proxy/cdh-proxy/attester/snp"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
)

// Env is the hardware seam. The zero value is the real machine.
type Env struct {
	// TSM is the configfs-tsm to use; nil probes the real /sys/kernel/config/tsm.
	TSM configfsi.Client
	// DevDir holds the guest device nodes; "" means /dev.
	DevDir string
	// TDXEventLog, when non-empty, is a CCEL file always sent in
	// cc_eventlog (--tdx-eventlog).
	TDXEventLog string
	// CCEL is the firmware event log sent with the runtime event log;
	// "" → eventlog.CCELPath.
	CCEL string
	// EventLogDir holds the runtime event log; "" → eventlog.DefaultDir.
	EventLogDir string
	// RTMR are TDX's runtime measurement registers; nil → the kernel's
	// (tdx.MeasurementsDir), when it has them.
	RTMR attester.Registers
	// Logger records the choice once; nil discards.
	Logger *slog.Logger
	// Azure configures the vTPM attesters; its zero value is Azure's
	// /dev/tpmrm0 and metadata service, evidence version 2.
	Azure azure.Options
	// AzureEvidenceVersion is 2 (Trustee ≥ 0.21) or 1 (Trustee 0.18–0.20); 0 means 2.
	AzureEvidenceVersion int
	// SampleFallback makes auto fall back to the sample attester when no
	// TEE is found, as guest-components does in a guest whose launcher
	// sets AA_SAMPLE_ATTESTER_TEST (test guests without a TEE).
	SampleFallback bool
}

// ErrNoTEE means neither TDX nor SEV-SNP was found.
var ErrNoTEE = errors.New("no TEE found: neither configfs-tsm (tdx_guest/sev_guest), an Azure CVM vTPM (HCL report), nor /dev/tdx_guest or /dev/sev-guest")

// Found describes a detected TEE.
type Found struct {
	Tee string // tdx, snp, az-snp-vtpm or az-tdx-vtpm
	Via string // for people: "configfs-tsm", the device path, or "vTPM <path>"

	source source // for build: where the evidence comes from
	azure  *azure.Device
}

// source is where a detected TEE's evidence comes from.
type source int

const (
	fromTSM    source = iota + 1 // configfs-tsm
	fromDevice                   // /dev/tdx_guest, /dev/sev-guest ioctls
	fromVTPM                     // an Azure paravisor's vTPM
)

// Detect returns the TEE of this guest. An HCL report in the vTPM means a
// paravisor sits below the guest: its own SNP/TDX devices, if any, cannot
// give VMPL-0 evidence, so the vTPM wins over them.
func Detect(ctx context.Context, env Env) (Found, error) {
	provider, _ := tsm.Probe(env.TSM) // absent configfs-tsm is not an error here
	switch provider {
	case tsm.ProviderTDX:
		return Found{Tee: tdx.Tee, Via: "configfs-tsm", source: fromTSM}, nil
	case tsm.ProviderSNP:
		return Found{Tee: snp.Tee, Via: "configfs-tsm", source: fromTSM}, nil
	}
	az := azure.NewDevice(env.Azure)
	var azErr error // a TPM that is there but unusable is worth naming
	if _, err := os.Stat(az.TPMPath()); err == nil {
		tee, err := az.Detect(ctx)
		if err == nil {
			return Found{Tee: tee, Via: "vTPM " + az.TPMPath(), source: fromVTPM, azure: az}, nil
		}
		azErr = err
	}
	dev := env.DevDir
	if dev == "" {
		dev = "/dev"
	}
	for _, d := range []struct{ tee, node string }{{tdx.Tee, "tdx_guest"}, {snp.Tee, "sev-guest"}} {
		p := filepath.Join(dev, d.node)
		if _, err := os.Stat(p); err == nil {
			return Found{Tee: d.tee, Via: p, source: fromDevice}, nil
		}
	}
	if azErr != nil {
		return Found{}, fmt.Errorf("%w (%v)", ErrNoTEE, azErr)
	}
	return Found{}, ErrNoTEE
}

// New builds the attester for name: auto, tdx, snp, az-snp-vtpm,
// az-tdx-vtpm or sample.
func New(ctx context.Context, name string, env Env) (attester.Attester, error) {
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if name == sample.Tee {
		if f, err := Detect(ctx, env); err == nil {
			log.Warn("sample attester requested on TEE hardware: evidence will not be trusted by a production KBS", "tee", f.Tee)
		}
		log.Info("attester selected", "tee", sample.Tee, "via", "--attester sample (development only)")
		return sample.Attester{}, nil
	}
	f, err := Detect(ctx, env)
	if err != nil {
		// Only when nothing at all was found: a vTPM that is there but
		// unusable is a fault to report, not a test guest.
		if name == "auto" && env.SampleFallback && err == ErrNoTEE { //nolint:errorlint // exact: nothing found

			log.Warn("no TEE found: sample attester selected because AA_SAMPLE_ATTESTER_TEST is set; a production KBS will not trust its evidence")
			return sample.Attester{}, nil
		}
		if name == "auto" {
			return nil, fmt.Errorf("%w; for development against a test KBS pass --attester sample", err)
		}
		return nil, fmt.Errorf("--attester %s: %w", name, err)
	}
	if name != "auto" && name != f.Tee {
		return nil, fmt.Errorf("--attester %s, but this guest is %s (found via %s)", name, f.Tee, f.Via)
	}
	a, err := build(f, env)
	if err != nil {
		return nil, err
	}
	log.Info("attester selected", "tee", f.Tee, "via", f.Via)
	return a, nil
}

func build(f Found, env Env) (attester.Attester, error) {
	viaTSM := f.source == fromTSM
	switch f.Tee {
	case tdx.Tee:
		var p tdx.Provider = &tdx.DeviceProvider{}
		if viaTSM {
			tp, err := tdx.NewTSMProvider(env.TSM)
			if err != nil {
				return nil, err
			}
			p = tp
		}
		src := eventlog.Source{CCEL: cmp.Or(env.TDXEventLog, env.CCEL), Always: env.TDXEventLog != "", Dir: env.EventLogDir, Logger: env.Logger}
		rtmr := env.RTMR
		if _, err := os.Stat(tdx.MeasurementsDir); rtmr == nil && err == nil {
			rtmr = tdx.RTMRs{}
		}
		return tdx.New(p, tdx.Options{EventLog: src.Read, RTMR: rtmr}), nil
	case azure.TeeSNP, azure.TeeTDX:
		return azure.New(f.azure, f.Tee, cmp.Or(env.AzureEvidenceVersion, 2))
	case snp.Tee:
		var p snp.Provider = &snp.DeviceProvider{}
		if viaTSM {
			sp, err := snp.NewTSMProvider(env.TSM)
			if err != nil {
				return nil, err
			}
			p = sp
		}
		return snp.New(p), nil
	}
	return nil, fmt.Errorf("unsupported TEE %q", f.Tee)
}
