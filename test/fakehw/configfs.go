package fakehw

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
)

// configFS emulates /sys/kernel/config/tsm with go-configfs-tsm's fake
// (generation counters, entry lifecycle, privlevel checks) and answers
// outblob/auxblob from a simulator, so the production configfs-tsm code path
// runs unchanged against it.
func configFS(provider string, out func(rd [64]byte) ([]byte, error), aux func() []byte) configfsi.Client {
	sub := faketsm.ReportV7(0)
	// The kernel answers "provider" on a fresh entry; the fake only serves
	// attributes after a write unless they are pre-populated.
	makeEntry := sub.MakeEntry
	sub.MakeEntry = func() *faketsm.ReportEntry {
		e := makeEntry()
		e.ROAttrs = map[string][]byte{"provider": []byte(provider + "\n")}
		return e
	}
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "privlevel_floor":
			return []byte("0\n"), nil
		case "auxblob":
			if aux == nil {
				return nil, os.ErrNotExist
			}
			return aux(), nil
		case "outblob":
			in := e.InAttrs["inblob"]
			if in == nil || len(in.Value) == 0 || len(in.Value) > 64 {
				return nil, syscall.EINVAL
			}
			var rd [64]byte
			copy(rd[:], in.Value)
			return out(rd)
		}
		return nil, os.ErrNotExist
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

// ConfigFS returns a configfs-tsm (provider tdx_guest) backed by t.
func (t *TDX) ConfigFS() configfsi.Client {
	return configFS("tdx_guest", func(rd [64]byte) ([]byte, error) { return t.Quote(context.Background(), rd) }, nil)
}

// ConfigFS returns a configfs-tsm (provider sev_guest) backed by s.
func (s *SNP) ConfigFS() configfsi.Client {
	return configFS("sev_guest", func(rd [64]byte) ([]byte, error) {
		raw, _, err := s.Report(context.Background(), rd)
		return raw, err
	}, func() []byte { return append([]byte(nil), s.certTable...) })
}

// LoadConfigFS loads the simulator saved in dir for tee ("tdx" or "snp")
// and returns its configfs-tsm emulation: the "hardware" that
// test/cmd/cdh-proxy-fakehw hands cdh-proxy's commands in end-to-end tests.
func LoadConfigFS(tee, dir string) (configfsi.Client, error) {
	switch tee {
	case "tdx":
		t, err := LoadTDX(dir)
		if err != nil {
			return nil, err
		}
		return t.ConfigFS(), nil
	case "snp":
		s, err := LoadSNP(dir)
		if err != nil {
			return nil, err
		}
		return s.ConfigFS(), nil
	}
	return nil, fmt.Errorf("fakehw: unknown tee %q", tee)
}

// NoConfigFS is a configfs-tsm with no report provider: a machine without
// TDX or SEV-SNP, whatever the test machine has.
func NoConfigFS() configfsi.Client {
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{}}
}
