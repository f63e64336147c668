package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// ApplyFlagFile sets, from a TOML file of `flag-name = value` pairs, every
// flag of fs that the command line did not set: each cdh-proxy flag can
// live in a file (`cdh-proxy serve --config /etc/cdh-proxy.toml`), and the
// command line still wins. Unknown keys and bad values are errors naming
// the file and the key.
//
// It returns the names of the flags it set.
func ApplyFlagFile(fs *flag.FlagSet, path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var kv map[string]any
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&kv); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var applied []string
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return nil, fmt.Errorf("config %s: unknown key %q (keys are the flag names of %s)", path, k, fs.Name())
		}
		if set[k] {
			continue
		}
		applied = append(applied, k)
		switch v := kv[k].(type) {
		case []any:
			if _, ok := fs.Lookup(k).Value.(interface{ repeatable() }); !ok {
				return nil, fmt.Errorf("config %s: key %q: takes one value, not an array", path, k)
			}
			for _, e := range v {
				if err := fs.Set(k, fmt.Sprint(e)); err != nil {
					return nil, fmt.Errorf("config %s: key %q: %w", path, k, err)
				}
			}
		case string, bool, int64, float64:
			if err := fs.Set(k, fmt.Sprint(v)); err != nil {
				return nil, fmt.Errorf("config %s: key %q: %w", path, k, err)
			}
		default:
			return nil, fmt.Errorf("config %s: key %q: want a string, number or boolean, got %T", path, k, v)
		}
	}
	return applied, nil
}

// ListFlag is a repeatable flag (flag.Value): each use appends. In a
// --config file it takes an array, `kbs-url = ["https://a", "https://b"]`.
type ListFlag struct{ Values *[]string }

func (l ListFlag) String() string {
	if l.Values == nil {
		return ""
	}
	return strings.Join(*l.Values, ",")
}

// Set implements flag.Value.
func (l ListFlag) Set(s string) error {
	if s == "" {
		return errors.New("empty value")
	}
	*l.Values = append(*l.Values, s)
	return nil
}

// repeatable marks ListFlag for ApplyFlagFile.
func (ListFlag) repeatable() {}
