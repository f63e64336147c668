package tdx_test

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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
	js, err := tdx.New(hw, tdx.Options{}).Evidence(context.Background(), digest)
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
			_, err := tdx.New(tc.p, tdx.Options{}).Evidence(context.Background(), tc.rd)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEventLog(t *testing.T) {
	hw, _ := fakehw.NewTDX()
	log := []byte("event log")
	js, err := tdx.New(hw, tdx.Options{EventLog: func() ([]byte, error) { return log, nil }}).Evidence(context.Background(), []byte{1})
	if err != nil {
		t.Fatal(err)
	}
	var ev tdx.Evidence
	_ = json.Unmarshal(js, &ev)
	if ev.CCEventlog == nil || *ev.CCEventlog != base64.StdEncoding.EncodeToString(log) {
		t.Fatalf("cc_eventlog %v", ev.CCEventlog)
	}
	// No log to send: null, not "".
	js, _ = tdx.New(hw, tdx.Options{EventLog: func() ([]byte, error) { return nil, nil }}).Evidence(context.Background(), []byte{1})
	if !strings.Contains(string(js), `"cc_eventlog":null`) {
		t.Errorf("no log: %s", js)
	}
	if _, err := tdx.New(hw, tdx.Options{EventLog: func() ([]byte, error) { return nil, errors.New("unreadable") }}).Evidence(context.Background(), []byte{1}); err == nil {
		t.Fatal("event log error ignored")
	}
}

// An event recorded while the quote is made would be in the log and not
// in the quoted RTMRs (or the reverse): the quote is made again.
func TestEventLogChangingDuringQuote(t *testing.T) {
	hw, _ := fakehw.NewTDX()
	reads := 0
	logs := [][]byte{[]byte("one"), []byte("one two"), []byte("one two"), []byte("one two")}
	a := tdx.New(hw, tdx.Options{EventLog: func() ([]byte, error) { reads++; return logs[min(reads-1, len(logs)-1)], nil }})
	js, err := a.Evidence(context.Background(), []byte{1})
	if err != nil {
		t.Fatal(err)
	}
	var ev tdx.Evidence
	_ = json.Unmarshal(js, &ev)
	if ev.CCEventlog == nil || *ev.CCEventlog != base64.StdEncoding.EncodeToString([]byte("one two")) || hw.Calls() != 2 {
		t.Errorf("cc_eventlog %v after %d quotes, want the settled log after 2", ev.CCEventlog, hw.Calls())
	}
	n := 0
	busy := tdx.New(hw, tdx.Options{EventLog: func() ([]byte, error) { n++; return []byte{byte(n)}, nil }})
	if _, err := busy.Evidence(context.Background(), []byte{1}); err == nil || !strings.Contains(err.Error(), "kept being recorded") {
		t.Errorf("a log that never settles: %v", err)
	}
}

// The sysfs RTMR backend does what the kernel ABI asks: one 48-byte
// write at offset 0 of rtmr<N>:sha384 (a plain file then holds exactly
// the digest), 48-byte reads, RTMR N-1 for register N.
func TestRTMRSysfs(t *testing.T) {
	dir := t.TempDir()
	for i := range 4 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("rtmr%d:sha384", i)), bytes.Repeat([]byte{byte(i)}, 48), 0o600)
	}
	r := tdx.RTMRs{Dir: dir}
	if r.Hash() != crypto.SHA384 {
		t.Error("RTMRs are SHA-384")
	}
	for pcr, want := range map[uint64]uint32{0: 4, 1: 1, 7: 1, 2: 2, 6: 2, 8: 3, 15: 3, 16: 4, 17: 4, 23: 4, 100: 4} {
		if got, err := r.Register(pcr); err != nil || got != want {
			t.Errorf("PCR %d → register %d (%v), want %d", pcr, got, err, want)
		}
	}
	got, err := r.Read(t.Context(), 4)
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{3}, 48)) {
		t.Fatalf("Read(4) = %x, %v; want RTMR3's file", got, err)
	}
	d := bytes.Repeat([]byte{0xAB}, 48)
	if err := r.Extend(t.Context(), 4, d); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "rtmr3:sha384")); !bytes.Equal(b, d) {
		t.Errorf("rtmr3 file holds %x, want the digest written once at offset 0", b)
	}
	if err := r.Extend(t.Context(), 4, d[:32]); err == nil {
		t.Error("a 32-byte digest was written")
	}
	for _, reg := range []uint32{0, 5} {
		if _, err := r.Read(t.Context(), reg); err == nil {
			t.Errorf("register %d read", reg)
		}
	}
	os.WriteFile(filepath.Join(dir, "rtmr0:sha384"), []byte("short"), 0o600)
	if _, err := r.Read(t.Context(), 1); err == nil {
		t.Error("a 5-byte RTMR read")
	}
	// No sysfs: the attester says why it has no registers.
	if _, err := tdx.New(nil, tdx.Options{}).RuntimeRegisters(); !errors.Is(err, tdx.ErrNoRTMR) || !strings.Contains(err.Error(), "6.16") {
		t.Errorf("no RTMR: %v", err)
	}
}
