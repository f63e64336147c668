package config

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"sort"

	"github.com/pelletier/go-toml/v2"
)

// ApplyFlagFile sets, from a TOML file of `flag-name = value` pairs, every
// flag of fs that the command line did not set: each cdh-proxy flag can
// live in a file (`cdh-proxy serve --config /etc/cdh-proxy.toml`), and the
// command line still wins. Unknown keys and bad values are errors naming
// the file and the key.
func ApplyFlagFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var kv map[string]any
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&kv); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config %s: unknown key %q (keys are the flag names of %s)", path, k, fs.Name())
		}
		if set[k] {
			continue
		}
		switch v := kv[k].(type) {
		case string, bool, int64, float64:
			if err := fs.Set(k, fmt.Sprint(v)); err != nil {
				return fmt.Errorf("config %s: key %q: %w", path, k, err)
			}
		default:
			return fmt.Errorf("config %s: key %q: want a string, number or boolean, got %T", path, k, v)
		}
	}
	return nil
}
