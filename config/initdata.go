package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"os"

	"github.com/pelletier/go-toml/v2"
)

// DefaultInitDataDir is where kata writes the host-bound initdata
// (initdata.toml, and cdh.toml/aa.toml when its [data] carries them).
const DefaultInitDataDir = "/run/confidential-containers/initdata"

// DefaultInitDataPath is the initdata TOML inside it.
const DefaultInitDataPath = DefaultInitDataDir + "/initdata.toml"

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
	var doc map[string]any
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		return fmt.Errorf("initdata %s: %w", name, err)
	}
	if v, _ := doc["version"].(string); v != "0.1.0" {
		return fmt.Errorf("initdata %s: version %v, want \"0.1.0\"", name, doc["version"])
	}
	switch doc["algorithm"] {
	case "sha256", "sha384", "sha512":
	default:
		return fmt.Errorf("initdata %s: algorithm %v, want sha256, sha384 or sha512", name, doc["algorithm"])
	}
	table, ok := doc["data"].(map[string]any)
	if !ok {
		return fmt.Errorf("initdata %s: [data] table missing", name)
	}
	for k, v := range table {
		if _, ok := v.(string); !ok {
			return fmt.Errorf("initdata %s: [data] %s must be a string, got %T", name, k, v)
		}
	}
	return nil
}

// InitDataDigest is the digest the verifier expects bound into the TEE
// evidence: the initdata's algorithm over its exact bytes.
func InitDataDigest(data []byte) (algorithm string, digest []byte, err error) {
	var doc struct {
		Algorithm string `toml:"algorithm"`
	}
	if err := toml.Unmarshal(data, &doc); err != nil {
		return "", nil, fmt.Errorf("initdata: %w", err)
	}
	switch doc.Algorithm {
	case "sha256":
		h := sha256.Sum256(data)
		return doc.Algorithm, h[:], nil
	case "sha384":
		h := sha512.Sum384(data)
		return doc.Algorithm, h[:], nil
	case "sha512":
		h := sha512.Sum512(data)
		return doc.Algorithm, h[:], nil
	}
	return "", nil, fmt.Errorf("initdata: algorithm %q, want sha256, sha384 or sha512", doc.Algorithm)
}
