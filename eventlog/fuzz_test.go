package eventlog

import (
	"bytes"
	"crypto"
	"os"
	"strings"
	"testing"
)

// FuzzEventLog feeds hostile bytes to everything that reads a log (the
// firmware's CCEL, an AAEL being appended to) and to the event checks:
// no panic, results are prefixes of the input, and a valid event reads
// back as itself.
func FuzzEventLog(f *testing.F) {
	if v, err := os.ReadFile("testdata/CCEL_AAEL_alibabacloud"); err == nil {
		f.Add(v)
	}
	rec, _ := Encode(4, crypto.SHA384, "d o c")
	f.Add(append(append([]byte(nil), header[:]...), rec.Entry...))
	f.Add(rec.Entry)
	f.Add([]byte("github.com/confidential-containers PullImage {\"image\":\"x\", \"digest\":\"sha256:0\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if b, err := trimCCEL(data); err == nil && !bytes.HasPrefix(data, b) {
			t.Fatal("trimCCEL did not return a prefix")
		}
		if b, err := completeRecords(data); err == nil && !bytes.HasPrefix(data, b) {
			t.Fatal("completeRecords did not return a prefix")
		}
		if b, err := Evidence(data, data); err == nil && !bytes.HasSuffix(b, endMarker[:]) {
			t.Fatal("evidence without the end marker")
		}
		parts := strings.SplitN(string(data), " ", 3)
		if len(parts) == 3 {
			ev := Event{parts[0], parts[1], parts[2]}
			if ev.Validate() == nil {
				back, err := ParseText(ev.Text())
				if err != nil || back != ev {
					t.Fatalf("valid event %q reads back as %q (%v)", ev.Text(), back.Text(), err)
				}
			}
		}
	})
}
