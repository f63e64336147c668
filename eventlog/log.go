package eventlog

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/internal/securefile"
)

// DefaultInitPCR is aa.toml's default init_pcr: RTMR3 on TDX.
const DefaultInitPCR = 17

// maxPCR bounds the PCR numbers searched when recovering: a TPM has 24.
const maxPCR = 23

// ErrRegister marks a register index this platform has no register for.
var ErrRegister = errors.New("no such measurement register")

// Config configures a Log.
type Config struct {
	Dir       string // "" → DefaultDir
	InitPCR   uint64 // the PCR events go to when a request names none
	Registers attester.Registers
	Logger    *slog.Logger // nil → discard
}

// Log extends events into the registers and records them. One Log per
// directory: Open locks the log file against a second writer.
//
// Each extend is a small transaction (guest-components' order, so that
// either implementation recovers the other's write-ahead file): read the
// register, write the write-ahead file {offset of the entry, register
// value expected after the extend, event text}, extend, write the entry,
// delete the write-ahead file. A crash anywhere leaves either no
// write-ahead file (nothing or everything done) or one from which the
// next Open finishes the event.
type Log struct {
	dir     string
	regs    attester.Registers
	hash    crypto.Hash
	initReg uint32
	log     *slog.Logger
	sem     chan struct{} // serializes extends; a channel so waiters keep their ctx
	file    *os.File
	pos     int64
	// pending holds why the last extend stopped half-way (its write-ahead
	// file is still there): the next extend finishes it first.
	pending error
	// afterStep, in tests, stops an extend after the named step as a
	// crash would: nothing after it runs.
	afterStep func(step string) error
}

// Open opens (creating) the log in cfg.Dir, appending after what is
// there, and finishes an event a crash interrupted. A write-ahead file it
// cannot use refuses the start: the log and the register may disagree.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Registers == nil {
		return nil, errors.New("eventlog: no registers")
	}
	l := &Log{dir: cfg.Dir, regs: cfg.Registers, hash: cfg.Registers.Hash(), log: cfg.Logger, sem: make(chan struct{}, 1)}
	if l.dir == "" {
		l.dir = DefaultDir
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if _, err := algID(l.hash); err != nil {
		return nil, err
	}
	reg, err := l.regs.Register(cfg.InitPCR)
	if err != nil {
		return nil, fmt.Errorf("eventlog: init_pcr %d: %w: %w", cfg.InitPCR, ErrRegister, err)
	}
	l.initReg = reg
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(l.dir, LogName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("eventlog: %s is in use by another process (%w)", f.Name(), err)
	}
	l.file = f
	if l.pos, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	// A temporary write-ahead file never renamed into place: nothing
	// after it ran.
	if tmps, err := filepath.Glob(filepath.Join(l.dir, "."+WALName+".tmp-*")); err == nil {
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	if err := l.recover(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Close releases the log file.
func (l *Log) Close() error { return l.file.Close() }

func (l *Log) walPath() string { return filepath.Join(l.dir, WALName) }

// Extend measures ev into the register of pcr (nil: init_pcr) and
// records it. It returns the register extended, which the entry names.
// Events are validated first (*InvalidEventError); a pcr with no
// register wraps ErrRegister.
func (l *Log) Extend(ctx context.Context, ev Event, pcr *uint64) (uint32, error) {
	if err := ev.Validate(); err != nil {
		return 0, err
	}
	reg := l.initReg
	if pcr != nil {
		r, err := l.regs.Register(*pcr)
		if err != nil {
			return 0, fmt.Errorf("register index %d: %w: %w", *pcr, ErrRegister, err)
		}
		reg = r
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("waiting for the event log: %w", ctx.Err())
	}
	defer func() { <-l.sem }()
	if l.pending != nil {
		if err := l.recover(ctx); err != nil {
			return 0, fmt.Errorf("an earlier event is unfinished (%v): %w", l.pending, err)
		}
	}
	return reg, l.extend(ctx, reg, ev.Text())
}

func (l *Log) extend(ctx context.Context, reg uint32, text string) error {
	rec, err := Encode(reg, l.hash, text)
	if err != nil {
		return err
	}
	cur, err := l.read(ctx, reg)
	if err != nil {
		return err
	}
	expected := Fold(l.hash, cur, rec.Digest)
	if err := l.writeWAL(l.pos, expected, text); err != nil {
		return err
	}
	if err := l.step("wal"); err != nil {
		return err
	}
	if err := l.regs.Extend(ctx, reg, rec.Digest); err != nil {
		return l.extendFailed(ctx, reg, cur, expected, err)
	}
	if err := l.step("extend"); err != nil {
		return err
	}
	if err := l.writeEntry(l.pos, rec.Entry); err != nil {
		l.pending = err
		return err
	}
	if err := l.step("entry"); err != nil {
		return err
	}
	if err := os.Remove(l.walPath()); err != nil {
		l.pending = err
		return fmt.Errorf("eventlog: remove the write-ahead file: %w", err)
	}
	return nil
}

// extendFailed decides what a failed extend left: the register as it was
// (drop the write-ahead file: nothing happened), extended after all
// (finish the event), or something else (keep it, and stop).
func (l *Log) extendFailed(ctx context.Context, reg uint32, cur, expected []byte, cause error) error {
	now, err := l.read(ctx, reg)
	switch {
	case err == nil && bytes.Equal(now, cur):
		if rerr := os.Remove(l.walPath()); rerr != nil {
			l.pending = cause
		}
		return cause
	case err == nil && bytes.Equal(now, expected):
		l.pending = cause
		return l.recover(ctx)
	}
	l.pending = cause
	return cause
}

func (l *Log) step(name string) error {
	if l.afterStep == nil {
		return nil
	}
	return l.afterStep(name)
}

func (l *Log) read(ctx context.Context, reg uint32) ([]byte, error) {
	v, err := l.regs.Read(ctx, reg)
	if err != nil {
		return nil, err
	}
	if len(v) != l.hash.Size() {
		return nil, fmt.Errorf("register %d reads %d bytes, want %d", reg, len(v), l.hash.Size())
	}
	return v, nil
}

// writeWAL writes the write-ahead file in guest-components' layout:
// u64 big-endian offset of the entry in the log ‖ expected register
// value ‖ event text to the end. It is renamed into place, so a crash
// never leaves half a file.
func (l *Log) writeWAL(off int64, expected []byte, text string) error {
	b := binary.BigEndian.AppendUint64(nil, uint64(off))
	b = append(append(b, expected...), text...)
	if err := securefile.Write(l.walPath(), b); err != nil {
		return fmt.Errorf("eventlog: write-ahead file: %w", err)
	}
	return nil
}

// writeEntry puts entry at off and ends the log there (a torn earlier
// attempt at the same entry may have left more).
func (l *Log) writeEntry(off int64, entry []byte) error {
	if _, err := l.file.WriteAt(entry, off); err != nil {
		return fmt.Errorf("eventlog: write entry: %w", err)
	}
	end := off + int64(len(entry))
	if err := l.file.Truncate(end); err != nil {
		return fmt.Errorf("eventlog: write entry: %w", err)
	}
	if err := l.file.Sync(); err != nil {
		return fmt.Errorf("eventlog: write entry: %w", err)
	}
	l.pos = end
	return nil
}

// CorruptError is a write-ahead file that cannot be finished.
type CorruptError struct {
	Path   string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("eventlog: %s: %s; the event log and the measurement registers may disagree, so attestation that replays the log fails until the guest restarts. Delete the file to start anyway", e.Path, e.Reason)
}

// recover finishes the event of a write-ahead file, if there is one.
// guest-components looks only at init_pcr's register; the file does not
// say which register the event went to, so this looks at init_pcr's
// first and then every other, and takes the one the file's expected
// value identifies: already extended (equal) or one extend short.
func (l *Log) recover(ctx context.Context) error {
	b, err := os.ReadFile(l.walPath())
	if errors.Is(err, os.ErrNotExist) {
		l.pending = nil
		return nil
	}
	if err != nil {
		return &CorruptError{l.walPath(), err.Error()}
	}
	size := l.hash.Size()
	if len(b) < 8+size {
		return &CorruptError{l.walPath(), fmt.Sprintf("%d bytes, shorter than its offset and %d-byte register value", len(b), size)}
	}
	off := binary.BigEndian.Uint64(b)
	expected, text := b[8:8+size], string(b[8+size:])
	if !utf8.ValidString(text) {
		return &CorruptError{l.walPath(), "event text is not UTF-8"}
	}
	if _, err := ParseText(text); err != nil {
		return &CorruptError{l.walPath(), err.Error()}
	}
	fi, err := l.file.Stat()
	if err != nil {
		return fmt.Errorf("eventlog: %w", err)
	}
	if off > uint64(fi.Size()) {
		return &CorruptError{l.walPath(), fmt.Sprintf("entry offset %d is past the log's end (%d)", off, fi.Size())}
	}
	reg, done, digest, err := l.findRegister(ctx, expected, text)
	if err != nil {
		return err
	}
	if !done {
		if err := l.regs.Extend(ctx, reg, digest); err != nil {
			return fmt.Errorf("eventlog: finish the interrupted event: extend register %d: %w", reg, err)
		}
	}
	rec, err := Encode(reg, l.hash, text)
	if err != nil {
		return err
	}
	if err := l.writeEntry(int64(off), rec.Entry); err != nil {
		return err
	}
	if err := os.Remove(l.walPath()); err != nil {
		return fmt.Errorf("eventlog: remove the write-ahead file: %w", err)
	}
	l.pending = nil
	l.log.Warn("event log: finished an event a crash interrupted", "register", reg, "extended_now", !done, "offset", off)
	return nil
}

// findRegister returns the register whose value is expected (done) or
// one extend of the event's digest short of it. A register holding the
// expected value is conclusive; "one short" is not when several
// registers hold the same value, and then init_pcr's is taken, as
// guest-components does, or, without it, the only one.
func (l *Log) findRegister(ctx context.Context, expected []byte, text string) (reg uint32, done bool, digest []byte, err error) {
	rec, err := Encode(l.initReg, l.hash, text)
	if err != nil {
		return 0, false, nil, err
	}
	seen := map[uint32]bool{}
	candidates := []uint32{l.initReg}
	for p := range uint64(maxPCR + 1) {
		if r, err := l.regs.Register(p); err == nil {
			candidates = append(candidates, r)
		}
	}
	var short []uint32
	for _, r := range candidates {
		if seen[r] {
			continue
		}
		seen[r] = true
		cur, err := l.read(ctx, r)
		if err != nil {
			return 0, false, nil, fmt.Errorf("eventlog: recover: %w", err)
		}
		if bytes.Equal(cur, expected) {
			return r, true, rec.Digest, nil
		}
		if bytes.Equal(Fold(l.hash, cur, rec.Digest), expected) {
			short = append(short, r)
		}
	}
	switch {
	case len(short) == 1 || len(short) > 1 && short[0] == l.initReg:
		return short[0], false, rec.Digest, nil
	case len(short) > 1:
		return 0, false, nil, &CorruptError{l.walPath(), fmt.Sprintf("registers %v hold the same value, and the file does not say which one the event was for", short)}
	}
	return 0, false, nil, &CorruptError{l.walPath(), "no register holds its expected value or is one extend short of it (the log is corrupt, or another process extended the register)"}
}
