package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cdh.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseKBCParams(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "cc_kbc::http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{in: "cc_kbc::https://kbs.example", want: "https://kbs.example"},
		{in: "cc_kbc", wantErr: true},
		{in: "offline_fs_kbc::x", wantErr: true},
		{in: "cc_kbc::http://[::1]:8080", wantErr: true}, // upstream splits IPv6 too
		{in: "cc_kbc::", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseKBCParams(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseKBCParams(%q) = %q, %v", tt.in, got, err)
		}
	}
}

func TestPrecedenceAndConflicts(t *testing.T) {
	file := writeFile(t, "[kbc]\nname = \"cc_kbc\"\nurl = \"https://from-file:8080\"\n")
	tests := []struct {
		name      string
		flags     Flags
		env       map[string]string
		want      string
		wantWarns int
	}{
		{name: "file only", flags: Flags{ConfigFile: file, Cmdline: "-", InitDataDir: "-"}, want: "https://from-file:8080"},
		{name: "env beats file", flags: Flags{ConfigFile: file, Cmdline: "-", InitDataDir: "-"}, env: map[string]string{EnvKBCParams: "cc_kbc::https://from-env"}, want: "https://from-env", wantWarns: 1},
		{name: "flag beats all", flags: Flags{ConfigFile: file, KBSURLs: []string{"https://from-flag"}, Cmdline: "-", InitDataDir: "-"}, env: map[string]string{EnvKBCParams: "cc_kbc::https://from-env"}, want: "https://from-flag", wantWarns: 2},
		{name: "same URL twice is no conflict", flags: Flags{KBSURLs: []string{"https://from-file:8080"}, ConfigFile: file, Cmdline: "-", InitDataDir: "-"}, want: "https://from-file:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.flags, env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if c.KBSURL != tt.want || len(c.Warnings) != tt.wantWarns {
				t.Fatalf("url %q warnings %q; want %q and %d warnings", c.KBSURL, c.Warnings, tt.want, tt.wantWarns)
			}
		})
	}
}

func TestDefaultsAndValidation(t *testing.T) {
	c, err := Load(Flags{KBSURLs: []string{"http://127.0.0.1:8080"}, Cmdline: "-", InitDataDir: "-"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bind != DefaultBind || c.CacheTTL != DefaultCacheTTL || c.CacheMaxByte != DefaultCacheMaxBytes ||
		c.CacheMaxItem != DefaultCacheMaxEntry || c.Budget != DefaultBudget || c.Attester != "auto" {
		t.Fatalf("defaults: %+v", c)
	}
	zero := time.Duration(0)
	if c, err := Load(Flags{KBSURLs: []string{"http://x"}, CacheTTL: &zero, Cmdline: "-", InitDataDir: "-"}, env(nil)); err != nil || c.CacheTTL != 0 {
		t.Fatalf("explicit TTL 0: %v %v", c, err)
	}
	neg := -time.Second
	for name, f := range map[string]Flags{
		"no url":       {},
		"bad scheme":   {KBSURLs: []string{"ftp://x"}},
		"bad attester": {KBSURLs: []string{"http://x"}, Attester: "tpm"},
		"neg ttl":      {KBSURLs: []string{"http://x"}, CacheTTL: &neg},
		"bad level":    {KBSURLs: []string{"http://x"}, LogLevel: "loud"},
		"bad format":   {KBSURLs: []string{"http://x"}, LogFormat: "xml"},
		"missing cert": {KBSURLs: []string{"http://x"}, KBSCerts: []string{"/nonexistent/ca.pem"}},
		"missing file": {ConfigFile: "/nonexistent/cdh.toml"},
	} {
		if _, err := Load(f, env(nil)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseCDH(t *testing.T) {
	full := `socket = "unix:///run/confidential-containers/cdh.sock"
skip_sealed_secret_verification = true
[kbc]
name = "cc_kbc"
url = "https://kbs:8080"
kbs_cert = """-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----"""
[aa]
aa_socket = "unix:///x"
[log]
level = "debug"
[[credentials]]
resource_uri = "kbs:///default/key/1"
path = "/run/confidential-containers/cdh/kbs/key1"
[image]
max_concurrent_layer_downloads_per_image = 3
`
	f, warns, err := ParseCDH("cdh.toml", []byte(full))
	if err != nil || len(warns) != 0 {
		t.Fatalf("full file: %v %v", err, warns)
	}
	if !slices.Equal(f.KBC.URL, URLList{"https://kbs:8080"}) || !strings.Contains(f.KBC.KBSCert, "BEGIN CERTIFICATE") || len(f.Credentials) != 1 || !f.SkipSealedSecretVerification {
		t.Fatalf("parsed %+v", f)
	}

	_, warns, err = ParseCDH("cdh.toml", []byte("[kbc]\nurl = \"http://x\"\nflavour = \"vanilla\"\n[future]\nx = 1\n"))
	if err != nil || len(warns) != 2 || !strings.Contains(warns[0], "cdh.toml:3") || !strings.Contains(warns[0], "kbc.flavour") {
		t.Fatalf("unknown keys: %v %q", err, warns)
	}

	for name, tt := range map[string]struct{ body, want string }{
		"type error":   {"[kbc]\nname = \"cc_kbc\"\nurl = \"http://x\"\n[log]\nlevel = 5\n", `cdh.toml:5:`},
		"url type":     {"[kbc]\nname = \"cc_kbc\"\nurl = 5\n", `key "kbc.url": want a URL or an array of URLs`},
		"url elem":     {"[kbc]\nurl = [\"http://x\", 5]\n", `key "kbc.url": want a URL or an array of URLs, found 5`},
		"url empty":    {"[kbc]\nurl = []\n", "[kbc] url is required"},
		"syntax error": {"[kbc\nurl = \"x\"\n", "cdh.toml:1:"},
		"no url":       {"[kbc]\nname = \"cc_kbc\"\n", "[kbc] url is required"},
		"bad kbc":      {"[kbc]\nname = \"offline_fs_kbc\"\nurl = \"http://x\"\n", "not supported"},
	} {
		_, _, err := ParseCDH("cdh.toml", []byte(tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want it to mention %q", name, err, tt.want)
		}
	}
	_, _, err = ParseCDH("cdh.toml", []byte("[kbc]\nname = \"cc_kbc\"\nurl = 5\n"))
	if !strings.Contains(err.Error(), `"kbc.url"`) {
		t.Errorf("type error does not name the key: %v", err)
	}
}

func FuzzParseCDH(f *testing.F) {
	f.Add([]byte("[kbc]\nname = \"cc_kbc\"\nurl = \"http://x\"\n"))
	f.Add([]byte("socket = 1\n[[credentials]]\npath = []\n"))
	f.Add([]byte("[kbc\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := ParseCDH("fuzz.toml", data)
		if err == nil && len(c.KBC.URL) == 0 {
			t.Fatal("accepted a file without [kbc] url")
		}
	})
}

func TestInitData(t *testing.T) {
	good := "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\npolicy = \"x\"\n"
	p := filepath.Join(t.TempDir(), "initdata.toml")
	if err := os.WriteFile(p, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Flags{KBSURLs: []string{"http://x"}, InitData: p, Cmdline: "-", InitDataDir: "-"}, env(nil))
	if err != nil || string(c.InitData) != good {
		t.Fatalf("initdata not kept byte for byte: %v", err)
	}
	for name, body := range map[string]string{
		"bad version":   "version = \"0.2.0\"\nalgorithm = \"sha384\"\n[data]\n",
		"bad algorithm": "version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n",
		"no data":       "version = \"0.1.0\"\nalgorithm = \"sha256\"\n",
		"non-string":    "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n",
		"not toml":      "version = ",
	} {
		if err := ParseInitData("initdata.toml", []byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAllSourcesPrecedence(t *testing.T) {
	dir := t.TempDir()
	cdh := filepath.Join(dir, "cdh.toml")
	aa := filepath.Join(dir, "aa.toml")
	cmdline := filepath.Join(dir, "cmdline")
	credDir := filepath.Join(dir, "kbs")
	must := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	must(cdh, "socket = \"unix:///run/x/cdh.sock\"\nskip_sealed_secret_verification = true\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://cdh-toml\"\nkbs_cert = \"CERT-A\"\n[[credentials]]\nresource_uri = \"kbs:///default/key/1\"\npath = \""+credDir+"/key1\"\n")
	must(aa, "[token_configs.kbs]\nurl = \"https://aa-toml\"\ncert = \"CERT-B\"\ntee_key_algorithm = \"RSA-OAEP-256\"\n[eventlog_config]\nenable_eventlog = true\n")
	must(cmdline, "console=hvc0 agent.aa_kbc_params=cc_kbc::https://cmdline agent.aa_kbc_params=cc_kbc::https://second cdh.kbs_resources=kbs:///default/key/2::"+credDir+"/key2,kbs:///default/key/3::"+credDir+"/sub/key3 quiet")

	tests := []struct {
		name  string
		flags Flags
		env   map[string]string
		want  string
		from  string
	}{
		{"cmdline only", Flags{Cmdline: cmdline, CredDir: credDir}, nil, "https://cmdline", cmdline + " agent.aa_kbc_params"},
		{"aa.toml beats cmdline", Flags{Cmdline: cmdline, AAConfigFile: aa, CredDir: credDir}, nil, "https://aa-toml", aa + " [token_configs.kbs] url"},
		{"cdh.toml beats aa.toml", Flags{Cmdline: cmdline, AAConfigFile: aa, ConfigFile: cdh, CredDir: credDir}, nil, "https://cdh-toml", cdh + " [kbc] url"},
		{"env beats cdh.toml", Flags{Cmdline: cmdline, AAConfigFile: aa, ConfigFile: cdh, CredDir: credDir}, map[string]string{EnvKBCParams: "cc_kbc::https://env"}, "https://env", EnvKBCParams},
		{"flag beats env", Flags{KBSURLs: []string{"https://flag"}, Cmdline: cmdline, AAConfigFile: aa, ConfigFile: cdh, CredDir: credDir}, map[string]string{EnvKBCParams: "cc_kbc::https://env"}, "https://flag", "--kbs-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.flags, env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if c.KBSURL != tt.want || c.KBSURLSource != tt.from {
				t.Fatalf("url %q from %q, want %q from %q", c.KBSURL, c.KBSURLSource, tt.want, tt.from)
			}
			for _, w := range c.Warnings {
				if strings.Contains(w, "overrides") && !strings.Contains(w, tt.want) {
					t.Fatalf("conflict warning does not name the winner: %s", w)
				}
			}
		})
	}
	c, err := Load(Flags{Cmdline: cmdline, AAConfigFile: aa, ConfigFile: cdh, CredDir: credDir}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.KBSCerts) != 2 || c.KeyAlgorithm != "RSA-OAEP-256" || !c.SkipSealedSecretVerification || c.CDHSocket != "unix:///run/x/cdh.sock" {
		t.Fatalf("merged: certs %d alg %q skip %v socket %q", len(c.KBSCerts), c.KeyAlgorithm, c.SkipSealedSecretVerification, c.CDHSocket)
	}
	if len(c.Credentials) != 3 || c.Credentials[0].Path != credDir+"/key1" || c.Credentials[2].Path != credDir+"/sub/key3" {
		t.Fatalf("credentials %+v", c.Credentials)
	}
	if n := strings.Count(strings.Join(c.Warnings, "\n"), "overrides"); n != 2 {
		t.Fatalf("want 2 conflict warnings (aa.toml, cmdline), got %q", c.Warnings)
	}
	// aa.toml's [eventlog_config] turns the runtime event log on; init_pcr
	// keeps its default 17 unless set.
	if !c.EventLog || c.InitPCR != 17 || c.Sources["EventLog"] != aa+" [eventlog_config] enable_eventlog" || c.Sources["InitPCR"] != "default" {
		t.Fatalf("eventlog %v init_pcr %d (from %q, %q)", c.EventLog, c.InitPCR, c.Sources["EventLog"], c.Sources["InitPCR"])
	}
	if c.AAAddr != DefaultAASocket {
		t.Fatalf("aa_socket %q", c.AAAddr)
	}
	// Socket flags override the file; "none" disables.
	none := "none"
	c, _ = Load(Flags{ConfigFile: cdh, CDHSocket: &none, Cmdline: "-", CredDir: credDir}, env(nil))
	if c.CDHSocket != "" {
		t.Fatalf("--cdh-socket none: %q", c.CDHSocket)
	}
	c, _ = Load(Flags{KBSURLs: []string{"http://x"}, Cmdline: "-", InitDataDir: "-"}, env(map[string]string{EnvSkipSealedVerify: "TRUE"}))
	if !c.SkipSealedSecretVerification {
		t.Fatal("SKIP_SEALED_SECRET_VERIFICATION=TRUE ignored")
	}
}

func TestCredentialPathRules(t *testing.T) {
	for name, tt := range map[string]struct{ uri, path string }{
		"outside dir":  {"kbs:///a/b/c", "/etc/passwd"},
		"dotdot":       {"kbs:///a/b/c", DefaultCredentialsDir + "/../../etc/x"},
		"dot":          {"kbs:///a/b/c", DefaultCredentialsDir + "/./x"},
		"relative":     {"kbs:///a/b/c", "run/confidential-containers/cdh/kbs/x"},
		"prefix trick": {"kbs:///a/b/c", DefaultCredentialsDir + "-evil/x"},
		"bad uri":      {"kbs:///a/b", DefaultCredentialsDir + "/x"},
	} {
		f := filepath.Join(t.TempDir(), "cdh.toml")
		if err := os.WriteFile(f, []byte("[kbc]\nurl = \"http://x\"\n[[credentials]]\nresource_uri = \""+tt.uri+"\"\npath = \""+tt.path+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(Flags{ConfigFile: f, Cmdline: "-", InitDataDir: "-"}, env(nil)); err == nil {
			t.Errorf("%s: accepted %s -> %s", name, tt.uri, tt.path)
		}
	}
	if _, err := ParseCmdline("cdh.kbs_resources=kbs:///a/b/c"); err == nil {
		t.Error("cmdline resource without ::path accepted")
	}
}

func TestParseAA(t *testing.T) {
	_, _, err := ParseAA("aa.toml", []byte("[token_configs.kbs]\nurl = 1\n"))
	if err == nil || !strings.Contains(err.Error(), "aa.toml:2") || !strings.Contains(err.Error(), "token_configs.kbs.url") {
		t.Fatalf("type error: %v", err)
	}
	_, _, err = ParseAA("aa.toml", []byte("[eventlog_config]\nenable_eventlog = true\ninit_pcr = -1\n"))
	if err == nil || !strings.Contains(err.Error(), "aa.toml:3") || !strings.Contains(err.Error(), "eventlog_config.init_pcr") {
		t.Fatalf("negative init_pcr: %v", err)
	}
	aa, _, err := ParseAA("aa.toml", []byte("[eventlog_config]\nenable_eventlog = false\ninit_pcr = 23\n"))
	if err != nil || *aa.EventlogConfig.EnableEventlog || *aa.EventlogConfig.InitPCR != 23 {
		t.Fatalf("eventlog_config: %v %+v", err, aa.EventlogConfig)
	}
	_, warns, err := ParseAA("aa.toml", []byte("[token_configs.kbs]\nurl = \"x\"\nfoo = 1\n"))
	if err != nil || len(warns) != 1 || !strings.Contains(warns[0], "token_configs.kbs.foo") {
		t.Fatalf("unknown key: %v %q", err, warns)
	}
}

func FuzzParseAA(f *testing.F) {
	f.Add([]byte("[token_configs.kbs]\nurl = \"http://x\"\n"))
	f.Add([]byte("[eventlog_config]\ninit_pcr = \"x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, _ = ParseAA("fuzz.toml", data)
		_, _ = ParseCmdline(string(data))
		_ = ParseInitData("fuzz.toml", data)
	})
}

func TestInitDataDirFiles(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"cdh.toml":      "[kbc]\nname = \"cc_kbc\"\nurl = \"https://from-initdata\"\n",
		"aa.toml":       "[token_configs.kbs]\nurl = \"https://from-initdata\"\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 23\n",
		"initdata.toml": "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Load(Flags{InitDataDir: dir, Cmdline: "-"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.KBSURL != "https://from-initdata" || c.InitDataPath != filepath.Join(dir, "initdata.toml") || len(c.InitData) == 0 {
		t.Fatalf("initdata dir not used: %q %q", c.KBSURL, c.InitDataPath)
	}
	if !c.EventLog || c.InitPCR != 23 {
		t.Fatalf("initdata aa.toml [eventlog_config] not used: %v %d", c.EventLog, c.InitPCR)
	}
	// An explicit -c wins over the directory.
	other := filepath.Join(t.TempDir(), "cdh.toml")
	if err := os.WriteFile(other, []byte("[kbc]\nurl = \"https://explicit\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(Flags{InitDataDir: dir, ConfigFile: other, Cmdline: "-"}, env(nil)); err != nil || c.KBSURL != "https://explicit" {
		t.Fatalf("explicit -c: %v %v", c, err)
	}
	// Each drop-in reads only its own component's file (and initdata):
	// the attestation-agent process takes aa.toml's KBS even though
	// cdh.toml, which outranks it, is in the directory (found in the
	// guest test bed).
	if err := os.WriteFile(filepath.Join(dir, "aa.toml"), []byte("[token_configs.kbs]\nurl = \"https://aa-own\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for comp, want := range map[string]string{"aa": "https://aa-own", "cdh": "https://from-initdata"} {
		c, err := Load(Flags{InitDataDir: dir, Cmdline: "-", Component: comp}, env(nil))
		if err != nil || c.KBSURL != want || len(c.InitData) == 0 {
			t.Fatalf("%s drop-in: %v %v, want KBS %s and the initdata", comp, c, err, want)
		}
	}
}

func TestAzureSettings(t *testing.T) {
	base := Flags{KBSURLs: []string{"http://x"}, Cmdline: "-", InitDataDir: "-"}
	c, err := Load(base, env(nil))
	if err != nil || c.AzureEvidenceVersion != 2 || c.TPM != "" || c.AzureIMDS != "" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	f := base
	f.Attester, f.TPM, f.AzureIMDS, f.AzureEvidenceVersion = "az-tdx-vtpm", "/dev/tpm0", "http://127.0.0.1:1", 1
	if c, err = Load(f, env(nil)); err != nil || c.Attester != "az-tdx-vtpm" || c.TPM != "/dev/tpm0" || c.AzureIMDS != "http://127.0.0.1:1" || c.AzureEvidenceVersion != 1 {
		t.Fatalf("set: %+v %v", c, err)
	}
	f.AzureEvidenceVersion = 3
	if _, err := Load(f, env(nil)); err == nil || !strings.Contains(err.Error(), "Azure evidence version 3") {
		t.Fatalf("version 3: %v", err)
	}
	f.AzureEvidenceVersion, f.Attester = 2, "az-sev-vtpm"
	if _, err := Load(f, env(nil)); err == nil || !strings.Contains(err.Error(), `attester "az-sev-vtpm"`) {
		t.Fatalf("unknown attester: %v", err)
	}
}

// `cdh-proxy config` names the aa.toml that turned the event log on.
func TestDescribeEventLog(t *testing.T) {
	aa := filepath.Join(t.TempDir(), "aa.toml")
	if err := os.WriteFile(aa, []byte("[token_configs.kbs]\nurl = \"https://kbs\"\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 23\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Flags{AAConfigFile: aa, Cmdline: "-", InitDataDir: "-"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Setting{}
	for _, s := range c.Describe() {
		got[s.Name] = s
	}
	if s := got["eventlog"]; s.Value != "true" || s.Source != aa+" [eventlog_config] enable_eventlog" {
		t.Errorf("eventlog %+v", s)
	}
	if s := got["eventlog-init-pcr"]; s.Value != "23" || s.Source != aa+" [eventlog_config] init_pcr" {
		t.Errorf("eventlog-init-pcr %+v", s)
	}
}
