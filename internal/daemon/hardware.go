package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/detect"
	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

// Hardware is where the attesters find the TEE. The zero value is this
// machine; tests pass simulated hardware (test/fakehw) in its place, so
// everything above configfs-tsm, the device nodes and the vTPM runs as in
// production.
type Hardware struct {
	TSM    configfsi.Client // nil → the real /sys/kernel/config/tsm
	DevDir string           // "" → /dev
	// TPM is the Azure vTPM when the configuration names none ("" →
	// /dev/tpmrm0); a unix socket is spoken to as swtpm's.
	TPM string
	// RTMR are TDX's runtime measurement registers; nil → the kernel's.
	RTMR attester.Registers
	// CCEL is the firmware event log; "" → eventlog.CCELPath.
	CCEL string
}

// env is the detection environment for cfg on hw.
func (hw Hardware) env(cfg *config.Config, log *slog.Logger) detect.Env {
	env := detect.Env{
		TSM: hw.TSM, DevDir: hw.DevDir, Logger: log, TDXEventLog: cfg.TDXEventLog,
		RTMR: hw.RTMR, CCEL: hw.CCEL, EventLogDir: cfg.EventLogDir,
		Azure:                azure.Options{TPM: cfg.TPM, IMDS: cfg.AzureIMDS},
		AzureEvidenceVersion: cfg.AzureEvidenceVersion, SampleFallback: cfg.SampleFallback,
	}
	if env.Azure.TPM == "" {
		env.Azure.TPM = hw.TPM
	}
	return env
}

// NewAttester detects (or builds the asked-for) attester on hw and binds
// init-data where the attester does it itself.
func NewAttester(ctx context.Context, cfg *config.Config, hw Hardware, log *slog.Logger) (attester.Attester, error) {
	att, err := detect.New(ctx, cfg.Attester, hw.env(cfg, log))
	if err != nil {
		return nil, ConfigError{err}
	}
	if err := bindInitData(ctx, att, cfg.InitData, log); err != nil {
		return nil, err
	}
	return att, nil
}

// NewKBSClient builds the KBS client for cfg: the one place serve, the
// drop-ins and get do it. trace may be nil.
func NewKBSClient(cfg *config.Config, att attester.Attester, log *slog.Logger, trace func(string, time.Duration)) (*kbsclient.Client, error) {
	hc, err := kbsclient.NewHTTPClient(cfg.KBSCerts...)
	if err != nil {
		return nil, ConfigError{err}
	}
	kbs, err := kbsclient.New(kbsclient.Config{
		URL: cfg.KBSURLs[0], URLs: cfg.KBSURLs[1:], FailbackAfter: cfg.KBSFailback, Attester: att,
		KeyAlgorithm: kbsclient.KeyAlgorithm(cfg.KeyAlgorithm), InitData: cfg.InitData,
		HTTPClient: hc, Logger: log, HandshakeTimeout: cfg.Budget, Trace: trace,
		Measured: eventlog.Growth(cfg.EventLogDir),
	})
	if err != nil {
		return nil, ConfigError{err}
	}
	return kbs, nil
}

// bindInitData measures init-data into the TEE where the attester does it
// itself (Azure vTPM: PCR8); TDX and SNP carry it in MRCONFIGID/HOSTDATA,
// set by the host at launch.
func bindInitData(ctx context.Context, att attester.Attester, initData []byte, log *slog.Logger) error {
	b, ok := att.(interface {
		BindInitData(ctx context.Context, algorithm string, digest []byte) (bool, error)
	})
	if !ok || initData == nil {
		return nil
	}
	alg, digest, err := config.InitDataDigest(initData)
	if err != nil {
		return ConfigError{err}
	}
	extended, err := b.BindInitData(ctx, alg, digest)
	if errors.Is(err, azure.ErrInitDataAlgorithm) {
		return ConfigError{err}
	}
	if err != nil {
		return fmt.Errorf("bind init-data: %w", err)
	}
	log.Info("init-data bound", "tee", att.Tee(), "pcr", 8, "extended", extended)
	return nil
}

// openEventLog opens the runtime event log of an attestation agent whose
// configuration enables it. On a TEE without runtime registers every
// request answers NOT_SUPPORTED, as guest-components does (where its AA
// would crash at start on SNP); a write-ahead file that cannot be
// finished refuses the start.
func (d *Daemon) openEventLog(ctx context.Context, cfg *config.Config, att attester.Attester) (*eventlog.Recorder, error) {
	log := d.log.With("component", "eventlog")
	var why error
	if m, ok := att.(attester.Measurer); !ok {
		why = fmt.Errorf("the %s TEE has no runtime measurement registers", att.Tee())
	} else if regs, err := m.RuntimeRegisters(); err != nil {
		why = err
	} else {
		l, err := eventlog.Open(ctx, eventlog.Config{Dir: cfg.EventLogDir, InitPCR: cfg.InitPCR, Registers: regs, Logger: log})
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, func() { l.Close() })
		log.Info("runtime event log enabled", "dir", cfg.EventLogDir, "init_pcr", cfg.InitPCR, "tee", att.Tee())
		if _, vtpm := regs.(azure.PCRs); vtpm && cfg.InitPCR >= 17 && cfg.InitPCR <= 22 {
			log.Warn("init_pcr is a dynamic-launch PCR that Azure's vTPM refuses to extend from the guest: every measurement, and so every image pull, will fail; set init_pcr = 23 in aa.toml [eventlog_config]", "init_pcr", cfg.InitPCR)
		}
		return eventlog.NewRecorder(l, nil, log), nil
	}
	log.Warn("enable_eventlog is set, but runtime measurements are not supported here: ExtendRuntimeMeasurement answers NOT_SUPPORTED", "tee", att.Tee(), "reason", why)
	return eventlog.NewRecorder(nil, why, log), nil
}
