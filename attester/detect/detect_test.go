package detect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func devDir(t *testing.T, nodes ...string) string {
	t.Helper()
	d := t.TempDir()
	for _, n := range nodes {
		if err := os.WriteFile(filepath.Join(d, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestDetect(t *testing.T) {
	tdxHW, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	snpHW, err := fakehw.NewSNP("Genoa")
	if err != nil {
		t.Fatal(err)
	}
	noTSM := &faketsm.Client{Subsystems: map[string]configfsi.Client{}}
	azTPM := azureCVM(t, azure.TeeSNP)
	noTPM := azure.Options{TPM: filepath.Join(t.TempDir(), "no-tpm")}
	tests := []struct {
		name    string
		env     Env
		want    Found
		wantErr error
	}{
		{name: "configfs TDX", env: Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t)}, want: Found{Tee: "tdx", Via: "configfs-tsm"}},
		{name: "configfs SNP", env: Env{TSM: snpHW.ConfigFS(), DevDir: devDir(t)}, want: Found{Tee: "snp", Via: "configfs-tsm"}},
		{name: "configfs wins over device", env: Env{TSM: snpHW.ConfigFS(), DevDir: devDir(t, "tdx_guest")}, want: Found{Tee: "snp", Via: "configfs-tsm"}},
		{name: "TDX device only", env: Env{TSM: noTSM, DevDir: devDir(t, "tdx_guest")}},
		{name: "SNP device only", env: Env{TSM: noTSM, DevDir: devDir(t, "sev-guest")}},
		{name: "TDX before SNP", env: Env{TSM: noTSM, DevDir: devDir(t, "sev-guest", "tdx_guest")}},
		{name: "none", env: Env{TSM: noTSM, DevDir: devDir(t), Azure: noTPM}, wantErr: ErrNoTEE},
		{name: "Azure vTPM", env: Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: azTPM}}, want: Found{Tee: "az-snp-vtpm", Via: "vTPM " + azTPM}},
		{name: "vTPM wins over device", env: Env{TSM: noTSM, DevDir: devDir(t, "sev-guest"), Azure: azure.Options{TPM: azTPM}}, want: Found{Tee: "az-snp-vtpm", Via: "vTPM " + azTPM}},
		{name: "configfs wins over vTPM", env: Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), Azure: azure.Options{TPM: azTPM}}, want: Found{Tee: "tdx", Via: "configfs-tsm"}},
		{name: "TPM without HCL report", env: Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: plainTPM(t)}}, wantErr: ErrNoTEE},
	}
	tests[3].want = Found{Tee: "tdx", Via: filepath.Join(tests[3].env.DevDir, "tdx_guest")}
	tests[4].want = Found{Tee: "snp", Via: filepath.Join(tests[4].env.DevDir, "sev-guest")}
	tests[5].want = Found{Tee: "tdx", Via: filepath.Join(tests[5].env.DevDir, "tdx_guest")}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env.Azure.TPM == "" { // never the build machine's own TPM
				tt.env.Azure = noTPM
			}
			got, err := Detect(context.Background(), tt.env)
			if !errors.Is(err, tt.wantErr) || got.Tee != tt.want.Tee || got.Via != tt.want.Via {
				t.Fatalf("Detect = %+v, %v; want %+v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tdxHW, _ := fakehw.NewTDX()
	noTSM := &faketsm.Client{Subsystems: map[string]configfsi.Client{}}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	a, err := New(context.Background(), "auto", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), Logger: log})
	if err != nil || a.Tee() != "tdx" {
		t.Fatalf("auto on TDX: %v %v", a, err)
	}
	if !strings.Contains(logs.String(), "attester selected") || !strings.Contains(logs.String(), "tee=tdx") {
		t.Fatalf("choice not logged: %s", logs.String())
	}
	// Evidence through the configfs-tsm path carries the padded report data.
	ev, err := a.Evidence(context.Background(), []byte("binding"))
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Quote string }
	if err := json.Unmarshal(ev, &e); err != nil || e.Quote == "" || !strings.Contains(string(ev), `"cc_eventlog":null`) {
		t.Fatalf("evidence %s: %v", ev, err)
	}

	if _, err := New(context.Background(), "auto", Env{TSM: noTSM, DevDir: devDir(t)}); err == nil || !strings.Contains(err.Error(), "--attester sample") {
		t.Fatalf("auto without TEE: %v", err)
	}
	// AA_SAMPLE_ATTESTER_TEST: a test guest without a TEE falls back to
	// sample, with a warning; a TEE still wins, and a broken vTPM is still
	// reported.
	logs.Reset()
	if s, err := New(context.Background(), "auto", Env{TSM: noTSM, DevDir: devDir(t), Logger: log, SampleFallback: true}); err != nil || s.Tee() != "sample" {
		t.Fatalf("auto without TEE, sample fallback: %v %v", s, err)
	}
	if !strings.Contains(logs.String(), "AA_SAMPLE_ATTESTER_TEST") {
		t.Fatalf("sample fallback not logged: %s", logs.String())
	}
	if a, err := New(context.Background(), "auto", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), SampleFallback: true}); err != nil || a.Tee() != "tdx" {
		t.Fatalf("auto on TDX with sample fallback: %v %v", a, err)
	}
	if _, err := New(context.Background(), "auto", Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: t.TempDir()}, SampleFallback: true}); !errors.Is(err, ErrNoTEE) {
		t.Fatalf("unusable TPM with sample fallback: %v", err)
	}
	if _, err := New(context.Background(), "snp", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t)}); err == nil || !strings.Contains(err.Error(), "this guest is tdx") {
		t.Fatalf("snp on TDX: %v", err)
	}
	logs.Reset()
	s, err := New(context.Background(), "sample", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), Logger: log})
	if err != nil || s.Tee() != "sample" {
		t.Fatalf("explicit sample: %v %v", s, err)
	}
	if !strings.Contains(logs.String(), "sample attester requested on TEE hardware") {
		t.Fatalf("no warning for sample on TEE hardware: %s", logs.String())
	}

	tpm := azureCVM(t, azure.TeeTDX)
	for _, name := range []string{"auto", "az-tdx-vtpm"} {
		a, err := New(context.Background(), name, Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: tpm}})
		if err != nil || a.Tee() != "az-tdx-vtpm" {
			t.Fatalf("%s on Azure TDX: %v %v", name, a, err)
		}
	}
	if _, err := New(context.Background(), "az-snp-vtpm", Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: tpm}}); err == nil || !strings.Contains(err.Error(), "this guest is az-tdx-vtpm") {
		t.Fatalf("az-snp-vtpm on Azure TDX: %v", err)
	}
	// A TPM path that exists but cannot be used says why.
	_, err = New(context.Background(), "az-snp-vtpm", Env{TSM: noTSM, DevDir: devDir(t), Azure: azure.Options{TPM: t.TempDir()}})
	if !errors.Is(err, ErrNoTEE) || !strings.Contains(err.Error(), "TPM file is not a device") {
		t.Fatalf("unusable TPM: %v", err)
	}
}

// azureCVM is a swtpm provisioned by the simulated paravisor.
func azureCVM(t *testing.T, tee string) string {
	t.Helper()
	path := plainTPM(t)
	if _, err := fakehw.NewParavisor(path, tee); err != nil {
		t.Fatal(err)
	}
	return path
}

// plainTPM is a fresh swtpm (make test installs swtpm).
func plainTPM(t *testing.T) string {
	t.Helper()
	sw, err := fakehw.StartSwtpm()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close() })
	return sw.Path
}
