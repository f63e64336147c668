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
