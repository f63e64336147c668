package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Every field's source is recorded, by the one precedence list.
func TestSourcesRecorded(t *testing.T) {
	dir := t.TempDir()
	cdh := filepath.Join(dir, "cdh.toml")
	aa := filepath.Join(dir, "aa.toml")
	cmdline := filepath.Join(dir, "cmdline")
	mustWrite := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(cdh, "socket = \"unix:///run/cdh.sock\"\n[kbc]\nurl = \"https://from-cdh\"\n[log]\nlevel = \"debug\"\n")
	mustWrite(aa, "[token_configs.kbs]\nurl = \"https://from-aa\"\ntee_key_algorithm = \"RSA-OAEP-256\"\n[log]\nlevel = \"warn\"\n")
	mustWrite(cmdline, "quiet cdh.kbs_resources=kbs:///a/b/c::"+DefaultCredentialsDir+"/c\n")
	ttl := 5 * time.Second
	c, err := Load(Flags{
		ConfigFile: cdh, AAConfigFile: aa, Cmdline: cmdline, InitDataDir: "-",
		CacheTTL: &ttl, Bind: "127.0.0.1:9", FromFile: map[string]string{"bind": "/etc/cdh-proxy.toml"},
	}, env(map[string]string{EnvSkipSealedVerify: "true"}))
	if err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]string{
		"KBSURLs":                      cdh + " [kbc] url",
		"LogLevel":                     cdh + " [log] level",
		"KeyAlgorithm":                 aa + " tee_key_algorithm",
		"CDHSocket":                    cdh + " socket",
		"CacheTTL":                     "--cache-ttl",
		"Bind":                         "--config /etc/cdh-proxy.toml",
		"SkipSealedSecretVerification": EnvSkipSealedVerify,
		"Credentials":                  cmdline + " cdh.kbs_resources",
		"Budget":                       "default",
	} {
		if got := c.Sources[field]; got != want {
			t.Errorf("source of %s = %q, want %q", field, got, want)
		}
	}
	if c.LogLevel != "debug" || c.KeyAlgorithm != "RSA-OAEP-256" || c.CacheTTL != ttl || len(c.Credentials) != 1 {
		t.Fatalf("merged values: %+v", c)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], `"https://from-cdh" from `+cdh) || !strings.Contains(c.Warnings[0], `"https://from-aa"`) {
		t.Fatalf("warnings %q", c.Warnings)
	}
}

func TestDescribeRedacts(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := "-----BEGIN CERTIFICATE-----\nMIIBAjCBqaADAgECAgEBMAoGCCqGSM49BAMCMAAwHhcNMjYwMTAxMDAwMDAwWhcNMjcwMTAxMDAwMDAwWjAAMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(ca, []byte(pemBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Flags{KBSURLs: []string{"https://kbs:8080"}, KBSCerts: []string{ca}, Cmdline: "-", InitDataDir: "-"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	c.AzureIMDS = "http://user:pw@imds?sig=secret"
	got := map[string]Setting{}
	for _, s := range c.Describe() {
		got[s.Name] = s
	}
	if s := got["kbs-url"]; s.Value != "https://kbs:8080" || s.Source != "--kbs-url" {
		t.Errorf("kbs-url %+v", s)
	}
	if s := got["kbs-cert"]; !strings.HasPrefix(s.Value, "sha256:") || strings.Contains(s.Value, "BEGIN") {
		t.Errorf("kbs-cert %+v", s)
	}
	if s := got["azure-imds"]; strings.Contains(s.Value, "pw") || strings.Contains(s.Value, "secret") {
		t.Errorf("azure-imds not redacted: %+v", s)
	}
	if s := got["attester"]; s.Value != "auto" || s.Source != "default" {
		t.Errorf("attester %+v", s)
	}
	if s := got["eventlog"]; s.Value != "false" || s.Source != "default" {
		t.Errorf("eventlog %+v", s)
	}
	if s := got["eventlog-init-pcr"]; s.Value != "17" || s.Source != "default" {
		t.Errorf("eventlog-init-pcr %+v", s)
	}
	if _, err := Load(Flags{KBSURLs: []string{"https://user:pw@kbs"}, Cmdline: "-", InitDataDir: "-"}, env(nil)); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("KBS URL with user info: %v (must be refused, without echoing the password)", err)
	}
}
