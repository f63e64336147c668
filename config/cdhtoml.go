package config

import (
	"fmt"
	"os"
	"slices"

	"github.com/pelletier/go-toml/v2"
)

// CDHFile is cdh.toml as confidential-data-hub reads it
// (spec guest-compat.md, "Configuration that kata and operators already write").
type CDHFile struct {
	Socket string `toml:"socket"`
	KBC    struct {
		Name string `toml:"name"`
		// URL is a string, as guest-components writes it, or (cdh-proxy
		// only) an array of KBS endpoints in order of preference.
		URL     URLList `toml:"url"`
		KBSCert string  `toml:"kbs_cert"`
	} `toml:"kbc"`
	AA struct {
		AASocket string `toml:"aa_socket"`
	} `toml:"aa"`
	Log struct {
		Level string `toml:"level"`
	} `toml:"log"`
	Credentials []struct {
		ResourceURI string `toml:"resource_uri"`
		Path        string `toml:"path"`
	} `toml:"credentials"`
	SkipSealedSecretVerification bool  `toml:"skip_sealed_secret_verification"`
	Image                        Image `toml:"image"`
}

// URLList decodes a TOML string as a one-element list and an array of
// strings as itself; anything else is an error.
type URLList []string

// UnmarshalTOML implements go-toml's unstable.Unmarshaler (enabled in
// decodeStrict): it gets the raw value.
func (l *URLList) UnmarshalTOML(raw []byte) error {
	var v struct{ V any }
	if err := toml.Unmarshal(append([]byte("V = "), raw...), &v); err != nil {
		return err
	}
	switch x := v.V.(type) {
	case string:
		*l = URLList{x}
		return nil
	case []any:
		out := make(URLList, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf(`key "kbc.url": want a URL or an array of URLs, found %v in the array`, e)
			}
			out = append(out, s)
		}
		*l = out
		return nil
	}
	return fmt.Errorf(`key "kbc.url": want a URL or an array of URLs, found %T`, v.V)
}

// LoadCDHFile reads and parses a cdh.toml. Unknown keys are warnings (as
// upstream ignores them); syntax and type errors name the file, line and key.
func LoadCDHFile(path string) (*CDHFile, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	return ParseCDH(path, data)
}

// ParseCDH parses cdh.toml bytes; name is used in messages.
func ParseCDH(name string, data []byte) (*CDHFile, []string, error) {
	var f CDHFile
	warns, err := decodeStrict(name, data, &f)
	if err != nil {
		return nil, nil, err
	}
	switch f.KBC.Name {
	case "cc_kbc", "":
	default:
		return nil, nil, fmt.Errorf("%s: [kbc] name %q is not supported (only cc_kbc)", name, f.KBC.Name)
	}
	if len(f.KBC.URL) == 0 || slices.Contains(f.KBC.URL, "") {
		return nil, nil, fmt.Errorf("%s: [kbc] url is required", name)
	}
	if f.Image, err = f.Image.withDefaults(name); err != nil {
		return nil, nil, err
	}
	if f.Image.Proxy != nil {
		for _, k := range f.Image.Proxy.unknown {
			warns = append(warns, fmt.Sprintf("%s: unknown key %q ignored", name, "image.image_pull_proxy."+k))
		}
	}
	return &f, warns, nil
}
