package tsm_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/attester/internal/tsm"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func TestProviderMismatch(t *testing.T) {
	hw, err := fakehw.NewSNP("Genoa")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tsm.New(hw.ConfigFS(), tsm.ProviderTDX)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Report(context.Background(), tsm.Request{InBlob: make([]byte, 64)})
	if !errors.Is(err, tsm.ErrWrongProvider) || !strings.Contains(err.Error(), "sev_guest") {
		t.Fatalf("err = %v, want ErrWrongProvider naming sev_guest", err)
	}
}

func TestReportAndProbe(t *testing.T) {
	hw, _ := fakehw.NewSNP("Genoa")
	fs := hw.ConfigFS()
	if p, err := tsm.Probe(fs); err != nil || p != tsm.ProviderSNP {
		t.Fatalf("Probe = %q, %v", p, err)
	}
	c, _ := tsm.New(fs, tsm.ProviderSNP)
	lvl := uint(0)
	out, aux, err := c.Report(context.Background(), tsm.Request{InBlob: make([]byte, 64), PrivLevel: &lvl, GetAuxBlob: true})
	if err != nil || len(out) != 0x4A0 || len(aux) == 0 {
		t.Fatalf("Report: %d bytes, aux %d, %v", len(out), len(aux), err)
	}
	if hw.Calls() != 1 {
		t.Fatalf("simulator called %d times", hw.Calls())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := c.Report(ctx, tsm.Request{InBlob: make([]byte, 64)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}
