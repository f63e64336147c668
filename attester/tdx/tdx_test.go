package tdx_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

func TestEvidenceBindsPaddedReportData(t *testing.T) {
	hw, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	digest := bytes.Repeat([]byte{0xAB}, 48)
	js, err := tdx.New(hw, nil).Evidence(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	var ev tdx.Evidence
	if err := json.Unmarshal(js, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.CCEventlog != nil || !strings.Contains(string(js), `"cc_eventlog":null`) {
		t.Fatalf("cc_eventlog must be null by default: %s", js)
	}
	q, err := base64.StdEncoding.DecodeString(ev.Quote)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := tdx.ReportDataOf(q)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rd, append(digest, make([]byte, 16)...)) {
		t.Fatalf("report_data %x", rd)
	}
}

type fixedQuote []byte

func (f fixedQuote) Quote(context.Context, [64]byte) ([]byte, error) { return f, nil }

type failing struct{}

func (failing) Quote(context.Context, [64]byte) ([]byte, error) {
	return nil, errors.New("device busy")
}

func TestEvidenceRejects(t *testing.T) {
	hw, _ := fakehw.NewTDX()
	good, err := hw.Quote(context.Background(), [64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	v3 := bytes.Clone(good)
	binary.LittleEndian.PutUint16(v3, 3)
	sgx := bytes.Clone(good)
	binary.LittleEndian.PutUint32(sgx[4:], 0)
	for name, tc := range map[string]struct {
		p    tdx.Provider
		rd   []byte
		want string
	}{
		"other report data": {p: fixedQuote(good), rd: []byte{2}, want: "does not carry"},
		"v3 quote":          {p: fixedQuote(v3), rd: []byte{1}, want: "version 3"},
		"sgx quote":         {p: fixedQuote(sgx), rd: []byte{1}, want: "not TDX"},
		"truncated":         {p: fixedQuote(good[:100]), rd: []byte{1}, want: "too short"},
		"provider error":    {p: failing{}, rd: []byte{1}, want: "device busy"},
		"too much data":     {p: fixedQuote(good), rd: make([]byte, 65), want: "longer than 64"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tdx.New(tc.p, nil).Evidence(context.Background(), tc.rd)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEventLog(t *testing.T) {
	hw, _ := fakehw.NewTDX()
	p := filepath.Join(t.TempDir(), "CCEL")
	if err := os.WriteFile(p, []byte("event log"), 0o600); err != nil {
		t.Fatal(err)
	}
	js, err := tdx.New(hw, tdx.FileEventLog(p)).Evidence(context.Background(), []byte{1})
	if err != nil {
		t.Fatal(err)
	}
	var ev tdx.Evidence
	_ = json.Unmarshal(js, &ev)
	if ev.CCEventlog == nil || *ev.CCEventlog != base64.StdEncoding.EncodeToString([]byte("event log")) {
		t.Fatalf("cc_eventlog %v", ev.CCEventlog)
	}
	if _, err := tdx.New(hw, tdx.FileEventLog(p+".missing")).Evidence(context.Background(), []byte{1}); err == nil {
		t.Fatal("missing event log ignored")
	}
}
