package eventlog

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// guest-components' own vectors (eventlog/mod.rs tests) and the register
// values they give (spec: runtime-measurement.md, "Test plan").
func TestRecordVectors(t *testing.T) {
	const text = "domain operation content"
	if got := hex.EncodeToString(tagged(text)[:8]); got != "4c45414118000000" {
		t.Errorf("tagged event header %s", got)
	}
	for _, tc := range []struct {
		hash               crypto.Hash
		digest, fromZero   string
		fromOnes           string
		wantAlg, wantIndex string
	}{
		{crypto.SHA256, "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351",
			"14adddd6f695b5ea739479ff662bed8ae19b3051977f2cc16a2ee32a719e6032",
			"44e250d1fb4db44e9beda1e872abbef471686fea881dee7d13055e912d4ba6f4", "0b00", "11000000"},
		{crypto.SHA384, "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02",
			"82d3f7a4203f58dafe0519eb5e9f645339cda127418c62d4b0270d790ab6ff3c38783523613a7a9f610e7ba004788c26", "", "0c00", "04000000"},
	} {
		reg := uint32(17)
		if tc.hash == crypto.SHA384 {
			reg = 4
		}
		rec, err := Encode(reg, tc.hash, text)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(rec.Digest); got != tc.digest {
			t.Errorf("%v digest %s, want %s", tc.hash, got, tc.digest)
		}
		zero := make([]byte, tc.hash.Size())
		if got := hex.EncodeToString(Fold(tc.hash, zero, rec.Digest)); got != tc.fromZero {
			t.Errorf("%v register from zero %s, want %s", tc.hash, got, tc.fromZero)
		}
		if tc.fromOnes != "" {
			ones := bytes.Repeat([]byte{0xFF}, tc.hash.Size())
			if got := hex.EncodeToString(Fold(tc.hash, ones, rec.Digest)); got != tc.fromOnes {
				t.Errorf("%v register from 0xFF %s, want %s", tc.hash, got, tc.fromOnes)
			}
		}
		// mr_index, EV_EVENT_TAG, one digest, alg, digest, size, event.
		want := tc.wantIndex + "06000000" + "01000000" + tc.wantAlg + tc.digest + "20000000" + hex.EncodeToString(tagged(text))
		if got := hex.EncodeToString(rec.Entry); got != want {
			t.Errorf("%v entry\n got %s\nwant %s", tc.hash, got, want)
		}
	}
}

// The two AAEL entries at the end of Trustee's recorded TDX log
// (deps/eventlog/test_data/CCEL_AAEL_alibabacloud) come out byte for byte.
func TestRecordMatchesTrusteeVector(t *testing.T) {
	log, err := os.ReadFile("testdata/CCEL_AAEL_alibabacloud")
	if err != nil {
		t.Fatal(err)
	}
	var entries []byte
	for _, text := range []string{
		"coco.com some-operation some-content",
		`coco.com some-operation {"key": "value", "nested-key": {"sub-key": "value"}}`,
	} {
		rec, err := Encode(4, crypto.SHA384, text)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, rec.Entry...)
	}
	body := log[:len(log)-8]
	if !bytes.HasSuffix(body, entries) {
		t.Fatal("re-encoded AAEL entries are not the vector's last records")
	}
	if !bytes.Equal(log[len(log)-8:], endMarker[:]) {
		t.Fatal("vector does not end with the end marker")
	}
	// The vector is exactly what Evidence builds from its firmware part
	// (padded as the ACPI table is) and those entries.
	ccel := append(append([]byte(nil), body[:len(body)-len(entries)]...), bytes.Repeat([]byte{0xFF}, 4096)...)
	got, err := Evidence(ccel, entries)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, log) {
		t.Errorf("Evidence differs from the recorded log (%d vs %d bytes)", len(got), len(log))
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ev    Event
		field string
	}{
		{"ok", Event{"github.com/confidential-containers", "PullImage", `{"image":"a b", "digest":"sha256:x"}`}, ""},
		{"empty content ok", Event{"d", "o", ""}, ""},
		{"empty domain", Event{"", "o", "c"}, "domain"},
		{"empty operation", Event{"d", "", "c"}, "operation"},
		{"space in domain", Event{"a b", "o", "c"}, "domain"},
		{"tab in operation", Event{"d", "o\tp", "c"}, "operation"},
		{"nbsp in domain", Event{"a\u00a0b", "o", "c"}, "domain"},
		{"newline in content", Event{"d", "o", "a\nb"}, "content"},
		{"NUL in content", Event{"d", "o", "a\x00b"}, "content"},
		{"C1 control in content", Event{"d", "o", "a\u0085b"}, "content"},
		{"bad UTF-8 in content", Event{"d", "o", "a\xffb"}, "content"},
		{"bad UTF-8 in domain", Event{"\xff", "o", "c"}, "domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ev.Validate()
			var ie *InvalidEventError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.field != "" && !errors.As(err, &ie):
				t.Fatalf("err = %v, want an InvalidEventError", err)
			case tc.field != "" && ie.Field != tc.field:
				t.Fatalf("field %q, want %q (%v)", ie.Field, tc.field, err)
			}
			if tc.field == "" {
				back, err := ParseText(tc.ev.Text())
				if err != nil || back != tc.ev {
					t.Errorf("ParseText(Text()) = %+v, %v", back, err)
				}
			}
		})
	}
}

func TestParseTextNeedsTwoSpaces(t *testing.T) {
	for _, s := range []string{"", "a", "a b"} {
		if _, err := ParseText(s); err == nil || !strings.Contains(err.Error(), "two spaces") {
			t.Errorf("ParseText(%q) = %v", s, err)
		}
	}
}
