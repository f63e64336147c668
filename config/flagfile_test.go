package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestApplyFlagFile(t *testing.T) {
	newFS := func() (*flag.FlagSet, *string, *time.Duration, *int64) {
		fs := flag.NewFlagSet("cdh-proxy serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		url := fs.String("kbs-url", "", "")
		ttl := fs.Duration("stale-if-error", 0, "")
		n := fs.Int64("cache-max-bytes", 0, "")
		fs.String("config", "", "")
		return fs, url, ttl, n
	}
	f := filepath.Join(t.TempDir(), "cdh-proxy.toml")
	if err := os.WriteFile(f, []byte("kbs-url = \"https://from-file\"\nstale-if-error = \"10m\"\ncache-max-bytes = 1048576\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, url, ttl, n := newFS()
	_ = fs.Parse([]string{"--kbs-url", "https://from-flag"})
	applied, err := ApplyFlagFile(fs, f)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(applied, []string{"cache-max-bytes", "stale-if-error"}) {
		t.Fatalf("applied %q: want the keys the file set and the command line did not", applied)
	}
	if *url != "https://from-flag" || *ttl != 10*time.Minute || *n != 1<<20 {
		t.Fatalf("url %q ttl %v n %d: the command line must win, the file fill the rest", *url, *ttl, *n)
	}
	for name, body := range map[string]string{
		"unknown key": "kbs-urll = \"x\"\n",
		"bad value":   "stale-if-error = \"soon\"\n",
		"table":       "[kbc]\nurl = \"x\"\n",
		"not toml":    "kbs-url = ",
	} {
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		fs, _, _, _ := newFS()
		_ = fs.Parse(nil)
		if _, err := ApplyFlagFile(fs, f); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}
