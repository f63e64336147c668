package config

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestKBSEndpointLists(t *testing.T) {
	dir := t.TempDir()
	cdh := filepath.Join(dir, "cdh.toml")
	if err := os.WriteFile(cdh, []byte("[kbc]\nname = \"cc_kbc\"\nurl = [\"https://kbs-a:8080\", \"https://kbs-b:8080\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		flags Flags
		env   map[string]string
		want  []string
		from  string
		warns int
	}{
		{"repeated flag", Flags{KBSURLs: []string{"https://a", "https://b"}}, nil, []string{"https://a", "https://b"}, "--kbs-url", 0},
		{"cdh.toml list", Flags{ConfigFile: cdh}, nil, []string{"https://kbs-a:8080", "https://kbs-b:8080"}, cdh + " [kbc] url", 0},
		{"flag list beats cdh.toml list whole", Flags{ConfigFile: cdh, KBSURLs: []string{"https://x"}}, nil, []string{"https://x"}, "--kbs-url", 1},
		{"AA_KBC_PARAMS stays single and beats cdh.toml", Flags{ConfigFile: cdh}, map[string]string{EnvKBCParams: "cc_kbc::https://env"}, []string{"https://env"}, EnvKBCParams, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.flags.Cmdline, tt.flags.InitDataDir = "-", "-"
			c, err := Load(tt.flags, env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.KBSURLs, tt.want) || c.KBSURL != tt.want[0] || c.KBSURLSource != tt.from || len(c.Warnings) != tt.warns {
				t.Fatalf("urls %q (first %q) from %q, warnings %q; want %q from %q, %d warnings", c.KBSURLs, c.KBSURL, c.KBSURLSource, c.Warnings, tt.want, tt.from, tt.warns)
			}
		})
	}
	for name, f := range map[string]Flags{
		"duplicate":     {KBSURLs: []string{"https://a", "https://a/"}},
		"bad second":    {KBSURLs: []string{"https://a", "ftp://b"}},
		"bad plugin":    {KBSURLs: []string{"https://a"}, CachePlugins: []string{"../x"}},
		"reserved name": {KBSURLs: []string{"https://a"}, CachePlugins: []string{"auth"}},
	} {
		f.Cmdline, f.InitDataDir = "-", "-"
		if _, err := Load(f, env(nil)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestFlagFileLists(t *testing.T) {
	newFS := func() (*flag.FlagSet, *[]string, *string) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var urls []string
		fs.Var(ListFlag{Values: &urls}, "kbs-url", "")
		bind := fs.String("bind", "", "")
		return fs, &urls, bind
	}
	write := func(body string) string {
		p := filepath.Join(t.TempDir(), "c.toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fs, urls, _ := newFS()
	if _, err := ApplyFlagFile(fs, write(`kbs-url = ["https://a", "https://b"]`)); err != nil || !slices.Equal(*urls, []string{"https://a", "https://b"}) {
		t.Fatalf("array: %v %q", err, *urls)
	}
	fs, urls, _ = newFS()
	if _, err := ApplyFlagFile(fs, write(`kbs-url = "https://a"`)); err != nil || !slices.Equal(*urls, []string{"https://a"}) {
		t.Fatalf("single: %v %q", err, *urls)
	}
	fs, urls, _ = newFS()
	_ = fs.Parse([]string{"--kbs-url", "https://cli"})
	if _, err := ApplyFlagFile(fs, write(`kbs-url = ["https://a"]`)); err != nil || !slices.Equal(*urls, []string{"https://cli"}) {
		t.Fatalf("command line must win whole: %v %q", err, *urls)
	}
	fs, _, _ = newFS()
	if _, err := ApplyFlagFile(fs, write(`bind = ["a", "b"]`)); err == nil || !strings.Contains(err.Error(), "takes one value") {
		t.Fatalf("array for a single-valued flag: %v", err)
	}
}
