package kbs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

// The parser reads Trustee's recorded TDX log (deps/eventlog/test_data)
// into exactly the entries Trustee's own parser produced, AAEL details
// included.
func TestParseCCEventLogMatchesTrustee(t *testing.T) {
	raw, err := os.ReadFile("testdata/CCEL_AAEL_alibabacloud")
	if err != nil {
		t.Fatal(err)
	}
	events, err := parseCCEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	sameAsTrustee(t, events, "testdata/CCEL_AAEL_alibabacloud_out.json")
}

// sameAsTrustee compares parsed events with Trustee's parser's output:
// every field, and the details of AAEL events (the test KBS does not
// decode the firmware's own event details).
func sameAsTrustee(t *testing.T, events []ccEvent, trusteeJSON string) {
	t.Helper()
	var want struct {
		Events []map[string]any `json:"uefi_event_logs"`
	}
	b, err := os.ReadFile(trusteeJSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(events)
	var got []map[string]any
	json.Unmarshal(js, &got)
	if len(got) != len(want.Events) {
		t.Fatalf("%d events, Trustee has %d", len(got), len(want.Events))
	}
	for i := range got {
		keys := []string{"index", "type_name", "digests", "event", "digest_matches_event"}
		if d, _ := want.Events[i]["details"].(map[string]any); d["unicode_name"] == "AAEL" {
			keys = append(keys, "details")
		}
		for _, k := range keys {
			if !reflect.DeepEqual(got[i][k], want.Events[i][k]) {
				t.Errorf("event %d %s: %v, Trustee %v", i, k, got[i][k], want.Events[i][k])
			}
		}
	}
}

// A TD that boots (firmware log into RTMR0-2), pulls an image (the
// event log into RTMR3) and attests: the test KBS replays the log to the
// quoted RTMRs and shows the pull in its claims; a log that does not
// replay fails, as on Trustee.
func TestVerifyTDXEventLog(t *testing.T) {
	hwDir := t.TempDir()
	hw, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	rtmr := fakehw.RTMR{Dir: hwDir}
	hw.RTMR = &rtmr
	ccel := filepath.Join(hwDir, "CCEL")
	if err := rtmr.Firmware(ccel); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(hw.RootPEM())
	logDir := t.TempDir()
	src := eventlog.Source{CCEL: ccel, Dir: logDir}
	att := tdx.New(hw, tdx.Options{EventLog: src.Read, RTMR: rtmr})
	verify := func(ev json.RawMessage) (map[string]any, error) {
		return verifyTDX(ev, digest48(1), nil, roots, time.Now())
	}

	// Booted, nothing measured at run time: null, as before.
	ev, _ := att.Evidence(context.Background(), digest48(1))
	if !strings.Contains(string(ev), `"cc_eventlog":null`) {
		t.Fatalf("no runtime event: %s", ev)
	}
	l, err := eventlog.Open(t.Context(), eventlog.Config{Dir: logDir, InitPCR: 17, Registers: rtmr})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const digest = "sha256:0b2bce09e5b6e5b4e8b6da6f4f1c7d5e2a0a4c3f1e9d8c7b6a5f4e3d2c1b0a99"
	if _, err := l.Extend(t.Context(), eventlog.PullImageEvent("registry.example/app:v1", digest), nil); err != nil {
		t.Fatal(err)
	}
	ev, err = att.Evidence(context.Background(), digest48(1))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verify(ev)
	if err != nil {
		t.Fatalf("genuine log rejected: %v", err)
	}
	events := claims["uefi_event_logs"].([]ccEvent)
	last := events[len(events)-1]
	data := last.Details["data"].(map[string]any)
	content, _ := data["content"].(map[string]any)
	if last.Index != 4 || !last.DigestMatchesEvent || data["domain"] != "github.com/confidential-containers" ||
		data["operation"] != "PullImage" || content["digest"] != digest || content["image"] != "registry.example/app:v1" {
		t.Fatalf("pull event claim %+v", last)
	}
	if n := len(events); n != 4 {
		t.Errorf("%d events, want the 3 firmware ones and the pull", n)
	}

	// Tampering: the event text (digest no longer matches, replay still
	// does: Trustee replays recorded digests), a recorded digest (replay
	// fails), and the header form without the firmware's log.
	logBytes := func(ev json.RawMessage) []byte {
		var e tdx.Evidence
		json.Unmarshal(ev, &e)
		b, _ := base64.StdEncoding.DecodeString(*e.CCEventlog)
		return b
	}
	with := func(b []byte) json.RawMessage {
		var e tdx.Evidence
		json.Unmarshal(ev, &e)
		s := base64.StdEncoding.EncodeToString(b)
		e.CCEventlog = &s
		out, _ := json.Marshal(e)
		return out
	}
	text := logBytes(ev)
	i := bytes.LastIndex(text, []byte("app:v1"))
	text[i] ^= 0x20
	claims, err = verify(with(text))
	if err != nil {
		t.Fatalf("tampered text: %v", err)
	}
	evs := claims["uefi_event_logs"].([]ccEvent)
	if evs[len(evs)-1].DigestMatchesEvent {
		t.Error("tampered event text still matches its digest")
	}
	dig := logBytes(ev)
	dig[bytes.LastIndex(dig, []byte("LEAA"))-30] ^= 1 // inside the recorded digest (size, then 48 bytes)
	if _, err := verify(with(dig)); err == nil || !strings.Contains(err.Error(), "RTMR3") {
		t.Errorf("tampered digest: %v", err)
	}
	aael, _ := os.ReadFile(filepath.Join(logDir, eventlog.LogName))
	headerOnly, _ := eventlog.Evidence(nil, aael)
	if _, err := verify(with(headerOnly)); err == nil || !strings.Contains(err.Error(), "RTMR0") {
		t.Errorf("header form without the CCEL: %v, want RTMR0 not to replay", err)
	}
}

// cdh-proxy's log, as Trustee's own parser took it: the committed log was
// fed to Trustee's deps/eventlog (testdata/README.md), which replayed MR
// 1-4 to the committed RTMRs and produced the committed JSON. The writer
// still writes exactly those bytes, and the test KBS reads them as
// Trustee did.
func TestLogTrusteeAccepted(t *testing.T) {
	hw := t.TempDir()
	r := fakehw.RTMR{Dir: hw}
	ccel := filepath.Join(hw, "CCEL")
	if err := r.Firmware(ccel); err != nil {
		t.Fatal(err)
	}
	logDir := t.TempDir()
	l, err := eventlog.Open(t.Context(), eventlog.Config{Dir: logDir, InitPCR: 17, Registers: r})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pcr8 := uint64(8)
	for _, e := range []struct {
		ev  eventlog.Event
		pcr *uint64
	}{
		{eventlog.PullImageEvent("registry.example/app:v1", "sha256:0b2bce09e5b6e5b4e8b6da6f4f1c7d5e2a0a4c3f1e9d8c7b6a5f4e3d2c1b0a99"), nil},
		{eventlog.Event{Domain: "example.com", Operation: "Configure", Content: "mode=strict"}, nil},
		{eventlog.Event{Domain: "example.com", Operation: "Other", Content: `{"a": [1, 2]}`}, &pcr8},
	} {
		if _, err := l.Extend(t.Context(), e.ev, e.pcr); err != nil {
			t.Fatal(err)
		}
	}
	got, err := eventlog.Source{CCEL: ccel, Dir: logDir}.Read()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile("testdata/cdh-proxy-eventlog.bin")
	if !bytes.Equal(got, want) {
		t.Fatalf("the log differs from the one Trustee accepted (%d vs %d bytes)", len(got), len(want))
	}
	vals, _ := r.Values()
	rtmrs, _ := os.ReadFile("testdata/cdh-proxy-eventlog.rtmrs")
	for i, line := range strings.Fields(string(rtmrs)) {
		if hex.EncodeToString(vals[i]) != line {
			t.Errorf("RTMR%d differs from the one Trustee replayed to", i)
		}
	}
	events, err := parseCCEventLog(got)
	if err != nil {
		t.Fatal(err)
	}
	sameAsTrustee(t, events, "testdata/cdh-proxy-eventlog.trustee.json")
}
