package eventlog

import (
	"bytes"
	"compress/gzip"
	"crypto"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Trustee's recorded firmware log (deps/eventlog/test_data/CCEL_data, the
// 1 MiB ACPI table, zero-padded), gzipped.
func ccelVector(t *testing.T) []byte {
	t.Helper()
	f, err := os.Open("testdata/CCEL_data.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrimCCEL(t *testing.T) {
	raw := ccelVector(t)
	trimmed, err := trimCCEL(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(trimmed) == 0 || len(trimmed) == len(raw) {
		t.Fatalf("trimmed to %d of %d bytes", len(trimmed), len(raw))
	}
	if rest := raw[len(trimmed):]; len(bytes.Trim(rest, "\x00")) != 0 {
		t.Error("trimmed before the end of the records: non-zero bytes follow")
	}
	// The last record ends exactly there: walking the trimmed log from
	// its first record reaches its end.
	if end, err := walk(trimmed, 4+4+20+4+int(binary.LittleEndian.Uint32(trimmed[28:]))); err != nil || end != len(trimmed) {
		t.Errorf("walk = %d, %v", end, err)
	}
	// The same table padded with 0xFF instead trims the same.
	ff := append(append([]byte(nil), trimmed...), bytes.Repeat([]byte{0xFF}, 100)...)
	if t2, err := trimCCEL(ff); err != nil || !bytes.Equal(t2, trimmed) {
		t.Errorf("0xFF padding: %d bytes, %v", len(t2), err)
	}
	// And one with no padding at all.
	if t3, err := trimCCEL(trimmed); err != nil || !bytes.Equal(t3, trimmed) {
		t.Errorf("no padding: %d bytes, %v", len(t3), err)
	}
}

func TestTrimCCELRejects(t *testing.T) {
	good := ccelVector(t)
	trimmed, _ := trimCCEL(good)
	notSpecID := append([]byte(nil), trimmed...)
	binary.LittleEndian.PutUint32(notSpecID[4:], 0x80000001)
	unknownAlg := append([]byte(nil), trimmed...)
	first := 32 + int(binary.LittleEndian.Uint32(trimmed[28:]))
	binary.LittleEndian.PutUint16(unknownAlg[first+12:], 0x0004) // SHA-1 is not in a CC log
	for name, b := range map[string][]byte{
		"empty":       {},
		"short":       trimmed[:20],
		"not spec ID": notSpecID,
		"spec ID too big": func() []byte {
			b := append([]byte(nil), trimmed[:40]...)
			binary.LittleEndian.PutUint32(b[28:], 1<<31)
			return b
		}(),
		"truncated record": trimmed[:len(trimmed)-3],
		"unknown alg":      unknownAlg,
	} {
		if _, err := trimCCEL(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestEvidenceForms(t *testing.T) {
	if b, err := Evidence(nil, nil); b != nil || err != nil {
		t.Errorf("no logs: %x, %v; want nil (null)", b, err)
	}
	rec, _ := Encode(4, crypto.SHA384, "d o c")
	// No CCEL: guest-components' fixed header, whose spec-ID event names
	// SHA-384 and SM3.
	got, err := Evidence(nil, rec.Entry)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte(nil), header[:]...), rec.Entry...), endMarker[:]...)
	if !bytes.Equal(got, want) {
		t.Errorf("header form\n got %x\nwant %x", got, want)
	}
	if len(header) != 69 || binary.LittleEndian.Uint32(header[28:]) != 37 {
		t.Error("header is not 69 bytes with a 37-byte spec ID event")
	}
	// An AAEL read while an entry is being appended loses only that entry.
	torn := append(append([]byte(nil), rec.Entry...), rec.Entry[:30]...)
	ccel := ccelVector(t)
	got, err = Evidence(ccel, torn)
	if err != nil {
		t.Fatal(err)
	}
	trimmed, _ := trimCCEL(ccel)
	want = append(append(append([]byte(nil), trimmed...), rec.Entry...), endMarker[:]...)
	if !bytes.Equal(got, want) {
		t.Error("torn AAEL: the partial entry was not cut")
	}
	// An existing but empty AAEL still sends the CCEL.
	if got, _ := Evidence(ccel, []byte{}); !bytes.Equal(got, append(append([]byte(nil), trimmed...), endMarker[:]...)) {
		t.Error("empty AAEL: want the trimmed CCEL and the end marker")
	}
}

func TestSourceRead(t *testing.T) {
	dir := t.TempDir()
	ccelPath := filepath.Join(dir, "CCEL")
	aaelDir := filepath.Join(dir, "aa")
	os.Mkdir(aaelDir, 0o755)
	var logs bytes.Buffer
	src := Source{CCEL: ccelPath, Dir: aaelDir, Logger: slog.New(slog.NewTextHandler(&logs, nil))}

	// Nothing measured yet: null, as before runtime measurements existed.
	if err := os.WriteFile(ccelPath, ccelVector(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := src.Read(); b != nil || err != nil {
		t.Fatalf("no AAEL: %d bytes, %v; want null", len(b), err)
	}
	// An AAEL: the whole log.
	rec, _ := Encode(4, crypto.SHA384, "d o c")
	os.WriteFile(filepath.Join(aaelDir, LogName), rec.Entry, 0o644)
	b, err := src.Read()
	if err != nil || !bytes.HasSuffix(b, append(append([]byte(nil), rec.Entry...), endMarker[:]...)) {
		t.Fatalf("AAEL: %d bytes, %v", len(b), err)
	}
	// No CCEL table: null and a warning that says why.
	os.Remove(ccelPath)
	if b, err := src.Read(); b != nil || err != nil {
		t.Fatalf("no CCEL: %d bytes, %v; want null", len(b), err)
	}
	if !strings.Contains(logs.String(), "no firmware CCEL table") {
		t.Errorf("no warning: %s", logs.String())
	}
	// The operator named the CCEL: missing is an error, present is sent
	// even without an AAEL.
	src.Always = true
	if _, err := src.Read(); err == nil {
		t.Error("--tdx-eventlog with no CCEL: no error")
	}
	os.WriteFile(ccelPath, ccelVector(t), 0o644)
	os.Remove(filepath.Join(aaelDir, LogName))
	trimmed, _ := trimCCEL(ccelVector(t))
	if b, err := src.Read(); err != nil || !bytes.Equal(b, append(trimmed, endMarker[:]...)) {
		t.Errorf("--tdx-eventlog without AAEL: %d bytes, %v", len(b), err)
	}
}

func TestGrowth(t *testing.T) {
	dir := t.TempDir()
	g := Growth(dir)
	if g() != 0 {
		t.Error("no log: want 0")
	}
	os.WriteFile(filepath.Join(dir, LogName), make([]byte, 77), 0o644)
	if g() != 77 {
		t.Errorf("Growth = %d, want 77", g())
	}
}
