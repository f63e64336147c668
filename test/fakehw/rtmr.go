package fakehw

import (
	"context"
	"crypto"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/attester"
	"github.com/cdh-proxy/cdh-proxy/attester/tdx"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
)

// RTMR simulates a TD's runtime measurement registers with the TDX
// module's extend semantics. They live in files under Dir, so that the
// processes of one simulated guest (the AA and CDH drop-ins, the test)
// share them, as they share the real ones; a sysfs-shaped directory of
// plain files could not extend. A TDX simulator with the same Dir puts
// them in its quotes.
type RTMR struct{ Dir string }

var _ attester.Registers = RTMR{}

// Hash implements attester.Registers.
func (RTMR) Hash() crypto.Hash { return crypto.SHA384 }

// Register implements attester.Registers with the guest's own mapping.
func (RTMR) Register(pcr uint64) (uint32, error) { return tdx.RTMRs{}.Register(pcr) }

func (r RTMR) file(reg uint32) (string, error) {
	if reg < 1 || reg > 4 {
		return "", fmt.Errorf("fakehw: no CC measurement register %d", reg)
	}
	return filepath.Join(r.Dir, fmt.Sprintf("rtmr%d", reg-1)), nil
}

// Read implements attester.Registers: an RTMR never written is zero.
func (r RTMR) Read(_ context.Context, reg uint32) ([]byte, error) {
	name, err := r.file(reg)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(name)
	if os.IsNotExist(err) {
		return make([]byte, 48), nil
	}
	return b, err
}

// Extend implements attester.Registers, atomically across processes.
func (r RTMR) Extend(ctx context.Context, reg uint32, digest []byte) error {
	if len(digest) != 48 {
		return fmt.Errorf("fakehw: RTMR extend with %d bytes", len(digest))
	}
	name, err := r.file(reg)
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(r.Dir, "rtmr.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	cur, err := r.Read(ctx, reg)
	if err != nil {
		return err
	}
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, eventlog.Fold(crypto.SHA384, cur, digest), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// Values returns RTMR0-3.
func (r RTMR) Values() ([][]byte, error) {
	out := make([][]byte, 4)
	for i := range out {
		v, err := r.Read(context.Background(), uint32(i+1))
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// Firmware plays the firmware of a TD booting: it measures a few events
// into RTMR0-2 and writes the CCEL table that records them (a spec-ID
// event declaring SHA-384, then TCG_PCR_EVENT2 records, then the table's
// unused space as 0xFF) to ccelPath.
func (r RTMR) Firmware(ccelPath string) error {
	const (
		evSeparator = 0x4
		evIPL       = 0xD
		evNoAction  = 0x3
	)
	spec := []byte("Spec ID Event03\x00")
	spec = binary.LittleEndian.AppendUint32(spec, 0)   // platform class
	spec = append(spec, 0, 2, 0, 2)                    // version 2.0, errata 0, uintn 8 bytes
	spec = binary.LittleEndian.AppendUint32(spec, 1)   // one algorithm
	spec = binary.LittleEndian.AppendUint16(spec, 0xC) // SHA-384
	spec = binary.LittleEndian.AppendUint16(spec, 48)
	spec = append(spec, 0) // no vendor info
	log := binary.LittleEndian.AppendUint32(nil, 0)
	log = binary.LittleEndian.AppendUint32(log, evNoAction)
	log = append(log, make([]byte, 20)...)
	log = binary.LittleEndian.AppendUint32(log, uint32(len(spec)))
	log = append(log, spec...)
	for _, e := range []struct {
		reg  uint32
		typ  uint32
		data []byte
	}{
		{1, evSeparator, []byte{0, 0, 0, 0}},
		{2, evIPL, []byte("grub_cmd: linux /vmlinuz console=hvc0\x00")},
		{3, evIPL, []byte("kernel_cmdline: console=hvc0 agent.aa_kbc_params=cc_kbc::http://kbs\x00")},
	} {
		d := sha512.Sum384(e.data)
		log = binary.LittleEndian.AppendUint32(log, e.reg)
		log = binary.LittleEndian.AppendUint32(log, e.typ)
		log = binary.LittleEndian.AppendUint32(log, 1)
		log = binary.LittleEndian.AppendUint16(log, 0xC)
		log = append(log, d[:]...)
		log = binary.LittleEndian.AppendUint32(log, uint32(len(e.data)))
		log = append(log, e.data...)
		if err := r.Extend(context.Background(), e.reg, d[:]); err != nil {
			return err
		}
	}
	for len(log)%4096 != 0 {
		log = append(log, 0xFF)
	}
	return os.WriteFile(ccelPath, log, 0o644)
}
