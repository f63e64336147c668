package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// AAFile is aa.toml as attestation-agent reads it (-c).
type AAFile struct {
	TokenConfigs struct {
		KBS struct {
			URL             string `toml:"url"`
			Cert            string `toml:"cert"`
			TeeKeyAlgorithm string `toml:"tee_key_algorithm"`
		} `toml:"kbs"`
		CoCoAS struct {
			URL string `toml:"url"`
		} `toml:"coco_as"`
	} `toml:"token_configs"`
	TeeKeyAlgorithm string `toml:"tee_key_algorithm"`
	EventlogConfig  struct {
		EnableEventlog *bool   `toml:"enable_eventlog"`
		InitPCR        *uint64 `toml:"init_pcr"`
	} `toml:"eventlog_config"`
	Log struct {
		Level string `toml:"level"`
	} `toml:"log"`
}

// LoadAAFile reads and parses an aa.toml.
func LoadAAFile(path string) (*AAFile, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	return ParseAA(path, data)
}

// ParseAA parses aa.toml bytes. Like ParseCDH, unknown keys are warnings and
// errors name the file, line and key.
func ParseAA(name string, data []byte) (*AAFile, []string, error) {
	var f AAFile
	warns, err := decodeStrict(name, data, &f)
	if err != nil {
		return nil, nil, err
	}
	return &f, warns, nil
}

// decodeStrict decodes TOML into v: unknown keys become warnings, syntax and
// type errors name file:line:column and the key.
func decodeStrict(name string, data []byte, v any) ([]string, error) {
	err := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields().EnableUnmarshalerInterface().Decode(v)
	var strict *toml.StrictMissingError
	var derr *toml.DecodeError
	switch {
	case errors.As(err, &strict):
		var warns []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			warns = append(warns, fmt.Sprintf("%s:%d: unknown key %q ignored", name, row, strings.Join(e.Key(), ".")))
		}
		return warns, nil
	case errors.As(err, &derr):
		row, col := derr.Position()
		return nil, fmt.Errorf("%s:%d:%d: key %q: %s", name, row, col, strings.Join(derr.Key(), "."), derr.Error())
	case err != nil:
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return nil, nil
}
