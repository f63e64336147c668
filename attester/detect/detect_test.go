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
	tests := []struct {
		name    string
		env     Env
		want    Found
		wantErr error
	}{
		{name: "configfs TDX", env: Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t)}, want: Found{"tdx", "configfs-tsm"}},
		{name: "configfs SNP", env: Env{TSM: snpHW.ConfigFS(), DevDir: devDir(t)}, want: Found{"snp", "configfs-tsm"}},
		{name: "configfs wins over device", env: Env{TSM: snpHW.ConfigFS(), DevDir: devDir(t, "tdx_guest")}, want: Found{"snp", "configfs-tsm"}},
		{name: "TDX device only", env: Env{TSM: noTSM, DevDir: devDir(t, "tdx_guest")}},
		{name: "SNP device only", env: Env{TSM: noTSM, DevDir: devDir(t, "sev-guest")}},
		{name: "TDX before SNP", env: Env{TSM: noTSM, DevDir: devDir(t, "sev-guest", "tdx_guest")}},
		{name: "none", env: Env{TSM: noTSM, DevDir: devDir(t)}, wantErr: ErrNoTEE},
	}
	tests[3].want = Found{"tdx", filepath.Join(tests[3].env.DevDir, "tdx_guest")}
	tests[4].want = Found{"snp", filepath.Join(tests[4].env.DevDir, "sev-guest")}
	tests[5].want = Found{"tdx", filepath.Join(tests[5].env.DevDir, "tdx_guest")}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Detect(tt.env)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
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

	a, err := New("auto", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), Logger: log})
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

	if _, err := New("auto", Env{TSM: noTSM, DevDir: devDir(t)}); err == nil || !strings.Contains(err.Error(), "--attester sample") {
		t.Fatalf("auto without TEE: %v", err)
	}
	if _, err := New("snp", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t)}); err == nil || !strings.Contains(err.Error(), "this guest is tdx") {
		t.Fatalf("snp on TDX: %v", err)
	}
	logs.Reset()
	s, err := New("sample", Env{TSM: tdxHW.ConfigFS(), DevDir: devDir(t), Logger: log})
	if err != nil || s.Tee() != "sample" {
		t.Fatalf("explicit sample: %v %v", s, err)
	}
	if !strings.Contains(logs.String(), "sample attester requested on TEE hardware") {
		t.Fatalf("no warning for sample on TEE hardware: %s", logs.String())
	}
}
