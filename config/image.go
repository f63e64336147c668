package config

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DefaultImageWorkDir is where pulled layers live, as image-rs keeps them:
// /run is tmpfs in a confidential guest, so layers stay in encrypted memory.
const DefaultImageWorkDir = "/run/image-rs"

// DefaultImageLayerDownloads is image-rs's default
// max_concurrent_layer_downloads_per_image.
const DefaultImageLayerDownloads = 3

// EnvImageAuthURI overrides [image] authenticated_registry_credentials_uri,
// as confidential-data-hub reads it (peer pods set it to a file:// URI).
const EnvImageAuthURI = "CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS"

// Image is cdh.toml's [image] section as guest-components reads it
// (spec image-pull.md, "Configuration"). The zero value pulls with the
// defaults: no signature policy, no credentials, the system roots.
type Image struct {
	WorkDir                     string `toml:"work_dir"`
	MaxConcurrentLayerDownloads int    `toml:"max_concurrent_layer_downloads_per_image"`
	// PolicyURI (kbs:/// or file://) wins over the inline Policy.
	PolicyURI         string `toml:"image_security_policy_uri"`
	Policy            string `toml:"image_security_policy"`
	SigstoreConfigURI string `toml:"sigstore_config_uri"`
	AuthURI           string `toml:"authenticated_registry_credentials_uri"`
	// RegistriesURI (kbs:/// or file://) wins over the inline Registries.
	RegistriesURI         string          `toml:"registry_configuration_uri"`
	Registries            *RegistriesConf `toml:"registry_config"`
	ExtraRootCertificates []string        `toml:"extra_root_certificates"`
	Proxy                 *ImageProxy     `toml:"image_pull_proxy"`
	// SkipProxyIPs is the older guest-components' no_proxy, beside
	// image_pull_proxy given as a string.
	SkipProxyIPs string `toml:"skip_proxy_ips"`
}

// RegistriesConf is the subset of containers-registries.conf(5) that
// [image.registry_config] carries.
type RegistriesConf struct {
	UnqualifiedSearchRegistries []string   `toml:"unqualified-search-registries"`
	Registry                    []Registry `toml:"registry"`
}

// Registry is one [[registry]] entry of containers-registries.conf(5).
type Registry struct {
	Prefix   string   `toml:"prefix,omitempty"`
	Location string   `toml:"location,omitempty"`
	Insecure bool     `toml:"insecure,omitempty"`
	Blocked  bool     `toml:"blocked,omitempty"`
	Mirror   []Mirror `toml:"mirror,omitempty"`
}

// Mirror is one [[registry.mirror]] entry.
type Mirror struct {
	Location string `toml:"location"`
	Insecure bool   `toml:"insecure,omitempty"`
}

// ImageProxy is [image.image_pull_proxy]. Older guest-components wrote
// image_pull_proxy as one URL string (with skip_proxy_ips beside it); that
// string is the proxy for both schemes.
type ImageProxy struct {
	HTTPSProxy string `toml:"https_proxy"`
	HTTPProxy  string `toml:"http_proxy"`
	NoProxy    string `toml:"no_proxy"`

	unknown []string // keys of the table cdh-proxy does not know
}

// UnmarshalTOML takes the table (a [image.image_pull_proxy] section or an
// inline table) or the older single URL string. Unknown keys in the table
// are kept for ParseCDH to warn about, as everywhere in cdh.toml.
func (p *ImageProxy) UnmarshalTOML(raw []byte) error {
	var v struct{ V any }
	if err := toml.Unmarshal(append([]byte("V = "), raw...), &v); err != nil {
		// Not a value: the body of a [image.image_pull_proxy] section.
		var body map[string]any
		if err := toml.Unmarshal(raw, &body); err != nil {
			return fmt.Errorf(`key "image.image_pull_proxy": %w`, err)
		}
		v.V = body
	}
	switch x := v.V.(type) {
	case string:
		*p = ImageProxy{HTTPSProxy: x, HTTPProxy: x}
		return nil
	case map[string]any:
		*p = ImageProxy{}
		for k, val := range x {
			str, ok := val.(string)
			dst := map[string]*string{"https_proxy": &p.HTTPSProxy, "http_proxy": &p.HTTPProxy, "no_proxy": &p.NoProxy}[k]
			switch {
			case dst == nil:
				p.unknown = append(p.unknown, k)
			case !ok:
				return fmt.Errorf(`key "image.image_pull_proxy.%s": want a string, found %T`, k, val)
			default:
				*dst = str
			}
		}
		slices.Sort(p.unknown)
		return nil
	}
	return fmt.Errorf(`key "image.image_pull_proxy": want a table (https_proxy, http_proxy, no_proxy) or a proxy URL, found %T`, v.V)
}

// withDefaults fills what cdh.toml left out and checks what cannot work.
func (im Image) withDefaults(name string) (Image, error) {
	if im.WorkDir == "" {
		im.WorkDir = DefaultImageWorkDir
	}
	if im.SkipProxyIPs != "" && im.Proxy != nil && im.Proxy.NoProxy == "" {
		im.Proxy.NoProxy = im.SkipProxyIPs
	}
	if !strings.HasPrefix(im.WorkDir, "/") {
		return im, fmt.Errorf("%s: [image] work_dir %q must be an absolute path", name, im.WorkDir)
	}
	switch {
	case im.MaxConcurrentLayerDownloads == 0:
		im.MaxConcurrentLayerDownloads = DefaultImageLayerDownloads
	case im.MaxConcurrentLayerDownloads < 0:
		return im, fmt.Errorf("%s: [image] max_concurrent_layer_downloads_per_image must be positive, got %d", name, im.MaxConcurrentLayerDownloads)
	}
	for key, uri := range map[string]string{
		"image_security_policy_uri":              im.PolicyURI,
		"sigstore_config_uri":                    im.SigstoreConfigURI,
		"authenticated_registry_credentials_uri": im.AuthURI,
		"registry_configuration_uri":             im.RegistriesURI,
	} {
		if err := checkImageURI(uri); uri != "" && err != nil {
			return im, fmt.Errorf("%s: [image] %s %q: %w", name, key, uri, err)
		}
	}
	if r := im.Registries; r != nil {
		for i, reg := range r.Registry {
			if reg.Prefix == "" && reg.Location == "" {
				return im, fmt.Errorf("%s: [image.registry_config] registry #%d needs a prefix or a location", name, i+1)
			}
			for _, m := range reg.Mirror {
				if m.Location == "" {
					return im, fmt.Errorf("%s: [image.registry_config] registry %q: a mirror needs a location", name, cmp.Or(reg.Prefix, reg.Location))
				}
			}
		}
	}
	return im, nil
}

// RegistriesTOML is [image.registry_config] as a registries.conf file;
// nil when the section is absent.
func (im Image) RegistriesTOML() ([]byte, error) {
	if im.Registries == nil {
		return nil, nil
	}
	return toml.Marshal(im.Registries)
}

// checkImageURI accepts what [image] and its environment override may
// point at: a KBS resource or a local file.
func checkImageURI(uri string) error {
	if !strings.HasPrefix(uri, "kbs:///") && !strings.HasPrefix(uri, "file://") {
		return errors.New("want a kbs:/// or file:// URI")
	}
	return nil
}

// describe is one line for `cdh-proxy config`: where each part comes from,
// never its content (an inline policy or a proxy URL may carry secrets).
func (im Image) describe() string {
	policy := "none (every image accepted, as guest-components)"
	switch {
	case im.PolicyURI != "":
		policy = redactURL(im.PolicyURI)
	case im.Policy != "":
		policy = "inline"
	}
	regs := "defaults"
	switch {
	case im.RegistriesURI != "":
		regs = redactURL(im.RegistriesURI)
	case im.Registries != nil:
		regs = "inline"
	}
	parts := []string{
		"work_dir " + im.WorkDir,
		fmt.Sprintf("downloads %d", im.MaxConcurrentLayerDownloads),
		"policy " + policy,
		"registries " + regs,
	}
	if im.AuthURI != "" {
		parts = append(parts, "credentials "+redactURL(im.AuthURI))
	}
	if im.SigstoreConfigURI != "" {
		parts = append(parts, "sigstore "+redactURL(im.SigstoreConfigURI))
	}
	if n := len(im.ExtraRootCertificates); n > 0 {
		parts = append(parts, fmt.Sprintf("%d extra roots", n))
	}
	if im.Proxy != nil {
		parts = append(parts, "proxy set")
	}
	return strings.Join(parts, ", ")
}
