package config

import (
	"fmt"
	"os"
)

// CDHFile is cdh.toml as confidential-data-hub reads it
// (spec guest-compat.md, "Configuration that kata and operators already write").
type CDHFile struct {
	Socket string `toml:"socket"`
	KBC    struct {
		Name    string `toml:"name"`
		URL     string `toml:"url"`
		KBSCert string `toml:"kbs_cert"`
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
	SkipSealedSecretVerification bool           `toml:"skip_sealed_secret_verification"`
	Image                        map[string]any `toml:"image"` // accepted, unused: no image pull here
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
	if f.KBC.URL == "" {
		return nil, nil, fmt.Errorf("%s: [kbc] url is required", name)
	}
	return &f, warns, nil
}
