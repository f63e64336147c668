package eventlog

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
)

// fakeRegisters has real extend semantics in memory. tdx maps PCRs as a
// TDX guest does (RTMR0-3 as registers 1-4, SHA-384); otherwise it is a
// vTPM's 24 SHA-256 PCRs.
type fakeRegisters struct {
	tdx    bool
	mu     sync.Mutex
	vals   map[uint32][]byte
	refuse map[uint32]bool
}

var _ attester.Registers = (*fakeRegisters)(nil)

// newFakeTDX starts RTMR0-2 where firmware leaves them: distinct values.
func newFakeTDX() *fakeRegisters {
	f := &fakeRegisters{tdx: true, vals: map[uint32][]byte{}, refuse: map[uint32]bool{}}
	for r := uint32(1); r <= 3; r++ {
		f.vals[r] = bytes.Repeat([]byte{byte(r)}, 48)
	}
	return f
}

// firmware is the log the fake's RTMR0-2 values stand for.
func (f *fakeRegisters) firmware(reg uint32) []byte {
	if f.tdx && reg >= 1 && reg <= 3 {
		return bytes.Repeat([]byte{byte(reg)}, 48)
	}
	return nil
}
func newFakeVTPM() *fakeRegisters {
	return &fakeRegisters{vals: map[uint32][]byte{}, refuse: map[uint32]bool{}}
}

func (f *fakeRegisters) Hash() crypto.Hash {
	if f.tdx {
		return crypto.SHA384
	}
	return crypto.SHA256
}

func (f *fakeRegisters) Register(pcr uint64) (uint32, error) {
	if !f.tdx {
		if pcr > 23 {
			return 0, errors.New("the vTPM has PCR 0-23")
		}
		return uint32(pcr), nil
	}
	return tdx.RTMRs{}.Register(pcr)
}

func (f *fakeRegisters) Read(_ context.Context, reg uint32) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vals[reg]; ok {
		return append([]byte(nil), v...), nil
	}
	return make([]byte, f.Hash().Size()), nil
}

func (f *fakeRegisters) Extend(ctx context.Context, reg uint32, d []byte) error {
	if len(d) != f.Hash().Size() {
		return fmt.Errorf("digest of %d bytes", len(d))
	}
	cur, _ := f.Read(ctx, reg)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse[reg] {
		return fmt.Errorf("register %d refused the extend", reg)
	}
	f.vals[reg] = Fold(f.Hash(), cur, d)
	return nil
}

// replay folds a log's recorded digests per register, as Trustee does,
// checking each digest against its event.
func replay(t *testing.T, h crypto.Hash, log []byte, start func(uint32) []byte) (map[uint32][]byte, []string) {
	t.Helper()
	regs := map[uint32][]byte{}
	var texts []string
	for len(log) > 0 {
		if len(log) < 14+h.Size()+4 {
			t.Fatalf("torn record: %d bytes left", len(log))
		}
		reg := binary.LittleEndian.Uint32(log)
		if typ := binary.LittleEndian.Uint32(log[4:]); typ != evEventTag {
			t.Fatalf("event type %d", typ)
		}
		d := log[14 : 14+h.Size()]
		n := int(binary.LittleEndian.Uint32(log[14+h.Size():]))
		ev := log[18+h.Size() : 18+h.Size()+n]
		hh := h.New()
		hh.Write(ev)
		if !bytes.Equal(hh.Sum(nil), d) {
			t.Fatalf("digest of record %d does not match its event", len(texts))
		}
		if _, ok := regs[reg]; !ok {
			regs[reg] = start(reg)
			if regs[reg] == nil {
				regs[reg] = make([]byte, h.Size())
			}
		}
		regs[reg] = Fold(h, regs[reg], d)
		texts = append(texts, string(ev[8:]))
		log = log[18+h.Size()+n:]
	}
	return regs, texts
}

// consistent checks that the log in dir replays to the registers, that no
// write-ahead file is left, and returns the events' texts.
func consistent(t *testing.T, dir string, f *fakeRegisters) []string {
	t.Helper()
	log, err := os.ReadFile(filepath.Join(dir, LogName))
	if err != nil {
		t.Fatal(err)
	}
	got, texts := replay(t, f.Hash(), log, f.firmware)
	f.mu.Lock()
	defer f.mu.Unlock()
	for reg, v := range f.vals {
		if f.firmware(reg) != nil && got[reg] == nil {
			got[reg] = f.firmware(reg)
		}
		if !bytes.Equal(got[reg], v) {
			t.Errorf("register %d: log replays to %x, register holds %x", reg, got[reg], v)
		}
	}
	for reg := range got {
		if _, ok := f.vals[reg]; !ok && f.firmware(reg) == nil {
			t.Errorf("log has register %d, never extended", reg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, WALName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("write-ahead file left behind (%v)", err)
	}
	return texts
}

func open(t *testing.T, dir string, f *fakeRegisters) *Log {
	t.Helper()
	l, err := Open(t.Context(), Config{Dir: dir, InitPCR: DefaultInitPCR, Registers: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func ev(i int) Event { return Event{"example.com", "Op", fmt.Sprintf(`{"n":%d}`, i)} }

func TestExtendRecordsTheRegisterExtended(t *testing.T) {
	dir := t.TempDir()
	f := newFakeTDX()
	l := open(t, dir, f)
	pcr8 := uint64(8)
	for i, pcr := range []*uint64{nil, &pcr8, nil} {
		reg, err := l.Extend(t.Context(), ev(i), pcr)
		if err != nil {
			t.Fatal(err)
		}
		want := uint32(4)
		if pcr != nil {
			want = 3 // PCR 8 → RTMR2; upstream would record init_pcr's 4
		}
		if reg != want {
			t.Errorf("event %d went to register %d, want %d", i, reg, want)
		}
	}
	texts := consistent(t, dir, f)
	if len(texts) != 3 || texts[1] != ev(1).Text() {
		t.Errorf("texts %q", texts)
	}
	// Reopening appends; nothing is truncated.
	l.Close()
	l = open(t, dir, f)
	if _, err := l.Extend(t.Context(), ev(3), nil); err != nil {
		t.Fatal(err)
	}
	if texts := consistent(t, dir, f); len(texts) != 4 {
		t.Errorf("after reopen: %d events, want 4", len(texts))
	}
}

func TestExtendConcurrent(t *testing.T) {
	dir := t.TempDir()
	f := newFakeVTPM()
	l := open(t, dir, f)
	const n = 32
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := l.Extend(context.Background(), ev(i), nil)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if texts := consistent(t, dir, f); len(texts) != n {
		t.Errorf("%d events, want %d", len(texts), n)
	}
}

func TestExtendRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	f := newFakeVTPM()
	l := open(t, dir, f)
	var ie *InvalidEventError
	if _, err := l.Extend(t.Context(), Event{"a b", "o", "c"}, nil); !errors.As(err, &ie) {
		t.Errorf("bad domain: %v", err)
	}
	pcr := uint64(24)
	if _, err := l.Extend(t.Context(), ev(0), &pcr); !errors.Is(err, ErrRegister) {
		t.Errorf("PCR 24 on a vTPM: %v", err)
	}
	if texts := consistent(t, dir, f); len(texts) != 0 {
		t.Errorf("bad input was logged: %q", texts)
	}
}

var errCrash = errors.New("simulated crash")

// A crash after each step of an extend, then a restart: the log and the
// registers agree, the event is there exactly once, and the next extend
// works. Also for a register other than init_pcr's, which upstream's
// recovery never looks at.
func TestCrashRecovery(t *testing.T) {
	for _, step := range []string{"wal", "extend", "entry"} {
		for _, pcr := range []*uint64{nil, ptr(uint64(2))} {
			t.Run(fmt.Sprintf("%s/pcr%v", step, pcr != nil), func(t *testing.T) {
				dir := t.TempDir()
				f := newFakeTDX()
				l := open(t, dir, f)
				if _, err := l.Extend(t.Context(), ev(0), nil); err != nil {
					t.Fatal(err)
				}
				l.afterStep = func(s string) error {
					if s == step {
						return errCrash
					}
					return nil
				}
				if _, err := l.Extend(t.Context(), ev(1), pcr); !errors.Is(err, errCrash) {
					t.Fatalf("err = %v", err)
				}
				l.Close() // the process is gone: its lock with it
				l = open(t, dir, f)
				texts := consistent(t, dir, f)
				if len(texts) != 2 || texts[1] != ev(1).Text() {
					t.Fatalf("after recovery: %q", texts)
				}
				if _, err := l.Extend(t.Context(), ev(2), nil); err != nil {
					t.Fatal(err)
				}
				if texts := consistent(t, dir, f); len(texts) != 3 {
					t.Errorf("%d events after the next extend", len(texts))
				}
				log, _ := os.ReadFile(filepath.Join(dir, LogName))
				if pcr != nil {
					if reg, _, _ := recordAt(log, 1); reg != 2 {
						t.Errorf("recovered entry names register %d, want 2 (PCR 2 → RTMR1)", reg)
					}
				}
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

// recordAt returns the mr_index of the n-th SHA-384 record.
func recordAt(log []byte, n int) (uint32, []byte, bool) {
	for i := 0; len(log) >= 66; i++ {
		size := 66 + int(binary.LittleEndian.Uint32(log[62:]))
		if i == n {
			return binary.LittleEndian.Uint32(log), log[:size], true
		}
		log = log[size:]
	}
	return 0, nil, false
}

// Two registers with the same value one extend short of the file's
// expected value: which one the event was for is unknowable, so the start
// is refused, unless one of them is init_pcr's.
func TestRecoveryAmbiguous(t *testing.T) {
	text := "d o c"
	rec, _ := Encode(4, crypto.SHA384, text)
	wal := binary.BigEndian.AppendUint64(nil, 0)
	wal = append(append(wal, Fold(crypto.SHA384, make([]byte, 48), rec.Digest)...), text...)
	f := newFakeTDX()
	f.vals[1], f.vals[2] = make([]byte, 48), make([]byte, 48) // RTMR0, RTMR1 zero, RTMR3 not
	f.vals[4] = bytes.Repeat([]byte{9}, 48)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, WALName), wal, 0o644)
	_, err := Open(t.Context(), Config{Dir: dir, InitPCR: 17, Registers: f})
	if err == nil || !strings.Contains(err.Error(), "registers [1 2] hold the same value") {
		t.Fatalf("err = %v", err)
	}
	// With init_pcr's register among them, it is taken (upstream's choice).
	f.vals[4] = make([]byte, 48)
	l, err := Open(t.Context(), Config{Dir: dir, InitPCR: 17, Registers: f})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if got, _ := f.Read(t.Context(), 4); !bytes.Equal(got, Fold(crypto.SHA384, make([]byte, 48), rec.Digest)) {
		t.Error("init_pcr's register was not extended")
	}
}

// A crash half-way through writing the entry: recovery rewrites it.
func TestCrashTornEntry(t *testing.T) {
	dir := t.TempDir()
	f := newFakeTDX()
	l := open(t, dir, f)
	l.afterStep = func(s string) error {
		if s == "extend" {
			return errCrash
		}
		return nil
	}
	l.Extend(t.Context(), ev(0), nil)
	l.Close()
	rec, _ := Encode(4, crypto.SHA384, ev(0).Text())
	os.WriteFile(filepath.Join(dir, LogName), rec.Entry[:40], 0o644)
	open(t, dir, f)
	if texts := consistent(t, dir, f); len(texts) != 1 {
		t.Errorf("%q", texts)
	}
}

// The write-ahead file is guest-components' layout, so each recovers the
// other's: a big-endian offset, the expected register, the text.
func TestWALLayoutIsUpstreams(t *testing.T) {
	dir := t.TempDir()
	f := newFakeTDX()
	l := open(t, dir, f)
	for i := range 3 {
		l.Extend(t.Context(), ev(i), nil)
	}
	before, _ := os.ReadFile(filepath.Join(dir, LogName))
	l.afterStep = func(s string) error {
		if s == "wal" {
			return errCrash
		}
		return nil
	}
	l.Extend(t.Context(), ev(3), nil)
	wal, err := os.ReadFile(filepath.Join(dir, WALName))
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := f.Read(t.Context(), 4)
	rec, _ := Encode(4, crypto.SHA384, ev(3).Text())
	want := binary.BigEndian.AppendUint64(nil, uint64(len(before)))
	want = append(append(want, Fold(crypto.SHA384, cur, rec.Digest)...), ev(3).Text()...)
	if !bytes.Equal(wal, want) {
		t.Errorf("write-ahead file\n got %x\nwant %x", wal, want)
	}
	l.Close()

	// One written by guest-components (offset 0 of an empty log, the
	// register not yet extended) is finished.
	dir2 := t.TempDir()
	f2 := newFakeTDX()
	text := "github.com/confidential-containers PullImage {\"image\":\"x\", \"digest\":\"sha256:00\"}"
	rec2, _ := Encode(4, crypto.SHA384, text)
	up := binary.BigEndian.AppendUint64(nil, 0)
	up = append(append(up, Fold(crypto.SHA384, make([]byte, 48), rec2.Digest)...), text...)
	os.WriteFile(filepath.Join(dir2, WALName), up, 0o644)
	open(t, dir2, f2)
	if texts := consistent(t, dir2, f2); len(texts) != 1 || texts[0] != text {
		t.Errorf("upstream WAL: %q", texts)
	}
}

func TestCorruptWALRefusesStart(t *testing.T) {
	text := "d o c"
	rec, _ := Encode(4, crypto.SHA384, text)
	good := func(off uint64, expected []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, off)
		return append(append(b, expected...), text...)
	}
	for name, wal := range map[string][]byte{
		"short":            make([]byte, 30),
		"text not UTF-8":   append(good(0, Fold(crypto.SHA384, make([]byte, 48), rec.Digest))[:56], "d o \xff"...),
		"text one field":   append(good(0, Fold(crypto.SHA384, make([]byte, 48), rec.Digest))[:56], "nospace"...),
		"no register fits": good(0, bytes.Repeat([]byte{7}, 48)),
		"offset past end":  good(100, Fold(crypto.SHA384, make([]byte, 48), rec.Digest)),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, WALName), wal, 0o644)
			_, err := Open(t.Context(), Config{Dir: dir, InitPCR: 17, Registers: newFakeTDX()})
			var ce *CorruptError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), "Delete the file") || !strings.Contains(err.Error(), WALName) {
				t.Fatalf("err = %v, want a CorruptError naming the file and the way out", err)
			}
		})
	}
}

// A leftover temporary write-ahead file was never renamed into place:
// nothing after it ran, so it is dropped.
func TestHalfWrittenWALIsDropped(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "."+WALName+".tmp-123")
	os.WriteFile(tmp, []byte{1, 2, 3}, 0o644)
	f := newFakeTDX()
	open(t, dir, f)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Error("temporary write-ahead file left")
	}
}

// A register that refuses the extend (Azure's vTPM and PCR 17) fails the
// event and leaves nothing: no entry, no write-ahead file, the next
// event works.
func TestRefusedExtendLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	f := newFakeVTPM()
	f.refuse[17] = true
	l := open(t, dir, f)
	if _, err := l.Extend(t.Context(), ev(0), nil); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v", err)
	}
	if texts := consistent(t, dir, f); len(texts) != 0 {
		t.Fatalf("refused event logged: %q", texts)
	}
	f.refuse[17] = false
	if _, err := l.Extend(t.Context(), ev(1), nil); err != nil {
		t.Fatal(err)
	}
	if texts := consistent(t, dir, f); len(texts) != 1 || texts[0] != ev(1).Text() {
		t.Errorf("%q", texts)
	}
}

// An entry that cannot be written (tmpfs full, …) after the register was
// extended is finished before the next event, not lost.
func TestUnwrittenEntryIsFinishedNext(t *testing.T) {
	dir := t.TempDir()
	f := newFakeTDX()
	l := open(t, dir, f)
	rw := l.file
	ro, err := os.Open(rw.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	l.file = ro
	if _, err := l.Extend(t.Context(), ev(0), nil); err == nil {
		t.Fatal("write to a read-only log succeeded")
	}
	l.file = rw
	if _, err := l.Extend(t.Context(), ev(1), nil); err != nil {
		t.Fatal(err)
	}
	if texts := consistent(t, dir, f); len(texts) != 2 || texts[0] != ev(0).Text() {
		t.Errorf("%q", texts)
	}
}

func TestOneWriterPerLog(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, newFakeTDX())
	if _, err := Open(t.Context(), Config{Dir: dir, Registers: newFakeTDX()}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second writer: %v", err)
	}
}

func TestExtendWaitHonoursContext(t *testing.T) {
	l := open(t, t.TempDir(), newFakeTDX())
	l.sem <- struct{}{} // an extend in progress
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := l.Extend(ctx, ev(0), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	<-l.sem
}

// BenchmarkExtend is one measured event: register read, write-ahead file
// (written, synced, renamed), extend, entry written and synced, the file
// removed; registers in memory, so this is the log's own cost (a real
// RTMR extend is one TDCALL more, a vTPM PCR extend a TPM command).
func BenchmarkExtend(b *testing.B) {
	dir := b.TempDir()
	if shm := "/dev/shm"; dirWritable(shm) { // the guest's /run is tmpfs
		dir, _ = os.MkdirTemp(shm, "eventlog-bench")
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	l, err := Open(b.Context(), Config{Dir: dir, InitPCR: DefaultInitPCR, Registers: newFakeTDX()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ev := PullImageEvent("registry.example/app:v1", "sha256:0b2bce09e5b6e5b4e8b6da6f4f1c7d5e2a0a4c3f1e9d8c7b6a5f4e3d2c1b0a99")
	for b.Loop() {
		if _, err := l.Extend(b.Context(), ev, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func dirWritable(dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}
