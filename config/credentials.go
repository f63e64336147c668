package config

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cdh-proxy/cdh-proxy/resource"
)

// DefaultCredentialsDir is the only place CDH writes [[credentials]].
const DefaultCredentialsDir = "/run/confidential-containers/cdh/kbs"

// Credential is a resource fetched at startup into a file.
type Credential struct {
	ResourceURI string
	Path        string
	Source      string // for messages
}

// validate applies CDH's path rule: inside dir, no "." or ".." segments.
func (c Credential) validate(dir string) error {
	if _, err := resource.ParseURI(c.ResourceURI); err != nil {
		return fmt.Errorf("credential from %s: %w", c.Source, err)
	}
	for _, seg := range strings.Split(c.Path, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("credential from %s: path %q contains %q", c.Source, c.Path, seg)
		}
	}
	if !filepath.IsAbs(c.Path) || !strings.HasPrefix(c.Path, strings.TrimSuffix(dir, "/")+"/") {
		return fmt.Errorf("credential from %s: path %q must be inside %s", c.Source, c.Path, dir)
	}
	return nil
}
