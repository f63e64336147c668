package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestImageSection(t *testing.T) {
	// cdh.toml as kata's initdata carries it: the [image] keys of
	// guest-components, inline registries and an unknown key.
	dir := t.TempDir()
	cdh := `socket = "unix:///run/confidential-containers/cdh.sock"
[kbc]
name = "cc_kbc"
url = "https://kbs"

[image]
image_security_policy_uri = "kbs:///default/security-policy/test"
sigstore_config_uri = "kbs:///default/sigstore-config/test"
authenticated_registry_credentials_uri = "kbs:///default/credential/test"
max_concurrent_layer_downloads_per_image = 5
extra_root_certificates = ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]
some_future_key = 1

[image.image_pull_proxy]
https_proxy = "http://proxy:3128"
no_proxy = "10.0.0.0/8"

[image.registry_config]
unqualified-search-registries = ["docker.io"]

[[image.registry_config.registry]]
prefix = "quay.io/openshift-release-dev"
location = "mirror.local:8443/openshift"
insecure = true

[[image.registry_config.registry.mirror]]
location = "mirror2.local"
`
	if err := os.WriteFile(filepath.Join(dir, "cdh.toml"), []byte(cdh), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Flags{InitDataDir: dir, Cmdline: "-"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Image{
		WorkDir: DefaultImageWorkDir, MaxConcurrentLayerDownloads: 5,
		PolicyURI: "kbs:///default/security-policy/test", SigstoreConfigURI: "kbs:///default/sigstore-config/test",
		AuthURI:               "kbs:///default/credential/test",
		ExtraRootCertificates: []string{"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
		Proxy:                 &ImageProxy{HTTPSProxy: "http://proxy:3128", NoProxy: "10.0.0.0/8"},
		Registries: &RegistriesConf{UnqualifiedSearchRegistries: []string{"docker.io"}, Registry: []Registry{{
			Prefix: "quay.io/openshift-release-dev", Location: "mirror.local:8443/openshift", Insecure: true,
			Mirror: []Mirror{{Location: "mirror2.local"}},
		}}},
	}
	if !reflect.DeepEqual(c.Image, want) {
		t.Errorf("Image =\n%+v\nwant\n%+v", c.Image, want)
	}
	if !strings.Contains(strings.Join(c.Warnings, "\n"), "image.some_future_key") {
		t.Errorf("unknown [image] key not warned: %v", c.Warnings)
	}
	// The env of peer pods overrides the credentials URI.
	c, err = Load(Flags{InitDataDir: dir, Cmdline: "-"}, env(map[string]string{EnvImageAuthURI: "file:///run/peerpod/auth.json"}))
	if err != nil || c.Image.AuthURI != "file:///run/peerpod/auth.json" || !strings.Contains(c.Sources["Image"], EnvImageAuthURI) {
		t.Fatalf("env override: %v %+v %q", err, c.Image, c.Sources["Image"])
	}
	if _, err := Load(Flags{InitDataDir: dir, Cmdline: "-"}, env(map[string]string{EnvImageAuthURI: "https://x"})); err == nil {
		t.Error("an http URI for credentials was accepted")
	}
	// No [image]: the defaults.
	c, err = Load(Flags{KBSURLs: []string{"https://kbs"}, Cmdline: "-", InitDataDir: "-"}, env(nil))
	if err != nil || c.Image.WorkDir != "/run/image-rs" || c.Image.MaxConcurrentLayerDownloads != 3 || c.Image.PolicyURI != "" {
		t.Fatalf("defaults: %v %+v", err, c.Image)
	}
	var image string
	for _, s := range c.Describe() {
		if s.Name == "image" {
			image = s.Value
		}
	}
	if !strings.Contains(image, "every image accepted") || !strings.Contains(image, "work_dir /run/image-rs") {
		t.Errorf("config description of [image]: %q", image)
	}
}

// Older guest-components wrote the pull proxy as one URL and its
// exceptions as skip_proxy_ips.
func TestImageProxyOldForm(t *testing.T) {
	f, _, err := ParseCDH("cdh.toml", []byte("[kbc]\nurl = \"https://kbs\"\n[image]\nimage_pull_proxy = \"http://proxy:3128\"\nskip_proxy_ips = \"10.0.0.1,registry.local\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &ImageProxy{HTTPSProxy: "http://proxy:3128", HTTPProxy: "http://proxy:3128", NoProxy: "10.0.0.1,registry.local"}
	if !reflect.DeepEqual(f.Image.Proxy, want) {
		t.Errorf("proxy %+v, want %+v", f.Image.Proxy, want)
	}
	_, warns, err := ParseCDH("cdh.toml", []byte("[kbc]\nurl = \"https://kbs\"\n[image.image_pull_proxy]\nhttps_proxy = \"http://p:1\"\nftp_proxy = \"x\"\n"))
	if err != nil || !strings.Contains(strings.Join(warns, "\n"), "ftp_proxy") {
		t.Errorf("unknown proxy key: %v %v, want a warning", warns, err)
	}
	f, _, err = ParseCDH("cdh.toml", []byte("[kbc]\nurl = \"https://kbs\"\n[image]\nimage_pull_proxy = { https_proxy = \"http://p:1\", no_proxy = \"a\" }\n"))
	if err != nil || !reflect.DeepEqual(f.Image.Proxy, &ImageProxy{HTTPSProxy: "http://p:1", NoProxy: "a"}) {
		t.Errorf("inline table: %+v %v", f.Image.Proxy, err)
	}
}

func TestImageSectionErrors(t *testing.T) {
	for name, body := range map[string]string{
		"relative work_dir":   "work_dir = \"run/x\"",
		"negative downloads":  "max_concurrent_layer_downloads_per_image = -1",
		"http policy":         "image_security_policy_uri = \"https://x/policy.json\"",
		"plain path":          "registry_configuration_uri = \"/etc/registries.conf\"",
		"registry without id": "[[image.registry_config.registry]]\ninsecure = true",
		"mirror without loc":  "[[image.registry_config.registry]]\nlocation = \"a\"\n[[image.registry_config.registry.mirror]]\ninsecure = true",
		"proxy as a number":   "image_pull_proxy = 3",
	} {
		_, _, err := ParseCDH("cdh.toml", []byte("[kbc]\nurl = \"https://kbs\"\n[image]\n"+body+"\n"))
		if err == nil || !strings.Contains(err.Error(), "cdh.toml") {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
}
