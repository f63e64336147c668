package config

import (
	"bytes"
	"fmt"
	"os"

	"github.com/pelletier/go-toml/v2"
)

// DefaultInitDataPath is where kata writes the host-bound initdata.
const DefaultInitDataPath = "/run/confidential-containers/initdata/initdata.toml"

// LoadInitData reads an initdata TOML, validates it, and returns its exact
// bytes: the KBS hashes the body as sent, so it must not be re-encoded.
func LoadInitData(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("initdata %s: %w", path, err)
	}
	if err := ParseInitData(path, data); err != nil {
		return nil, err
	}
	return data, nil
}

// ParseInitData checks version = "0.1.0", algorithm ∈ sha256/sha384/sha512
// and a [data] table whose values are all strings.
func ParseInitData(name string, data []byte) error {
	var doc struct {
		Version   string         `toml:"version"`
		Algorithm string         `toml:"algorithm"`
		Data      map[string]any `toml:"data"`
	}
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		return fmt.Errorf("initdata %s: %w", name, err)
	}
	if doc.Version != "0.1.0" {
		return fmt.Errorf("initdata %s: version %q, want \"0.1.0\"", name, doc.Version)
	}
	switch doc.Algorithm {
	case "sha256", "sha384", "sha512":
	default:
		return fmt.Errorf("initdata %s: algorithm %q, want sha256, sha384 or sha512", name, doc.Algorithm)
	}
	if doc.Data == nil {
		return fmt.Errorf("initdata %s: [data] table missing", name)
	}
	for k, v := range doc.Data {
		if _, ok := v.(string); !ok {
			return fmt.Errorf("initdata %s: [data] %s must be a string, got %T", name, k, v)
		}
	}
	return nil
}
