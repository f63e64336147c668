package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestLibraryFlagsDoNotLeak(t *testing.T) {
	for _, args := range [][]string{{"serve", "-h"}, {"evidence", "-h"}, {"help"}} {
		var out, errOut bytes.Buffer
		run(args, &out, &errOut, Process{})
		all := out.String() + errOut.String()
		for _, leaked := range []string{"sev_guest_device_path", "tdx_guest_device_path", "self_throttle", "default_vmpl"} {
			if strings.Contains(all, leaked) {
				t.Fatalf("%v shows library flag %q:\n%s", args, leaked, all)
			}
		}
		if all == "" {
			t.Fatalf("%v printed nothing", args)
		}
	}
}

func TestEvidenceStdoutIsOnlyJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"evidence", "--attester", "sample", "--runtime-data", "hello"}, &out, &errOut, Process{}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var ev struct {
		SVN        string `json:"svn"`
		ReportData string `json:"report_data"`
	}
	if err := json.Unmarshal(out.Bytes(), &ev); err != nil || ev.ReportData != "aGVsbG8=" {
		t.Fatalf("stdout %q: %v", out.String(), err)
	}
	out.Reset()
	if code := run([]string{"evidence", "--attester", "sample", "--runtime-data", "a", "--encoding", "hex"}, &out, &errOut, Process{}); code != 2 || out.Len() != 0 {
		t.Fatalf("bad encoding: exit %d stdout %q", code, out.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errOut, Process{}); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}

func TestConfigCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"config", "--kbs-url", "https://kbs-a", "--kbs-url", "https://kbs-b", "--cache-ttl", "5s", "--cmdline", "-", "--initdata-dir", "-"}, &out, &errOut, Process{})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(out.String(), "\n")
	find := func(name string) []string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 0 && f[0] == name {
				return f
			}
		}
		t.Fatalf("no %s line in:\n%s", name, out.String())
		return nil
	}
	if f := find("kbs-url"); strings.Join(f[1:], " ") != "https://kbs-a, https://kbs-b --kbs-url" {
		t.Errorf("kbs-url line %q", f)
	}
	if f := find("cache-ttl"); f[1] != "5s" || f[2] != "--cache-ttl" {
		t.Errorf("cache-ttl line %q", f)
	}
	if f := find("bind"); f[1] != "127.0.0.1:8006" || f[2] != "default" {
		t.Errorf("bind line %q", f)
	}
	out.Reset()
	if code := run([]string{"config", "--cmdline", "-", "--initdata-dir", "-"}, &out, &errOut, Process{}); code != 78 {
		t.Fatalf("no KBS URL: exit %d, want 78", code)
	}
}
