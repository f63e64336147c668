package config

import (
	"fmt"
	"strings"
)

// DefaultCmdline is the kernel command line.
const DefaultCmdline = "/proc/cmdline"

// Cmdline holds what cdh-proxy reads from the kernel command line.
type Cmdline struct {
	KBCParams   string       // agent.aa_kbc_params (first occurrence)
	Credentials []Credential // cdh.kbs_resources=<uri>::<path>,…
}

// ParseCmdline reads agent.aa_kbc_params and cdh.kbs_resources.
func ParseCmdline(data string) (Cmdline, error) {
	var c Cmdline
	for _, tok := range strings.Fields(data) {
		if v, ok := strings.CutPrefix(tok, "agent.aa_kbc_params="); ok && c.KBCParams == "" {
			c.KBCParams = v
		}
		if v, ok := strings.CutPrefix(tok, "cdh.kbs_resources="); ok {
			for _, item := range strings.Split(v, ",") {
				if item == "" {
					continue
				}
				uri, path, ok := strings.Cut(item, "::")
				if !ok || uri == "" || path == "" {
					return c, fmt.Errorf("kernel cmdline cdh.kbs_resources: %q is not <resource_uri>::<path>", item)
				}
				c.Credentials = append(c.Credentials, Credential{ResourceURI: uri, Path: path, Source: "kernel cmdline"})
			}
		}
	}
	return c, nil
}
