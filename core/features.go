package core

import "fmt"

// Features are api-server-rest's --features route groups: which HTTP
// routes are served. The zero value serves resources only, as upstream's
// default.
type Features struct {
	Resource    bool // /cdh/resource, /cdh/plugin
	Attestation bool // /aa/evidence, /aa/token
}

// ParseFeatures reads "resource", "attestation" or "all" ("" is resource).
func ParseFeatures(s string) (Features, error) {
	switch s {
	case "", "resource":
		return Features{Resource: true}, nil
	case "attestation":
		return Features{Attestation: true}, nil
	case "all":
		return Features{Resource: true, Attestation: true}, nil
	}
	return Features{}, fmt.Errorf("features %q: want resource, attestation or all", s)
}

// String is the --features spelling.
func (f Features) String() string {
	switch {
	case f.Resource && f.Attestation:
		return "all"
	case f.Attestation:
		return "attestation"
	}
	return "resource"
}
