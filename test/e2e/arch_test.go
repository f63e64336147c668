package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// The front ends import core and never each other (docs/architecture.md).
func TestFrontEndsImportCoreNotEachOther(t *testing.T) {
	const mod = "github.com/cdh-proxy/cdh-proxy/"
	fronts := []string{"proxy/httpapi", "proxy/ttrpcapi", "proxy/forward"}
	for _, f := range fronts {
		out, err := exec.Command("go", "list", "-deps", "../../"+f).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", f, err)
		}
		deps := strings.Fields(string(out))
		hasCore := false
		for _, d := range deps {
			if d == mod+"core" {
				hasCore = true
			}
			for _, other := range fronts {
				if other != f && d == mod+other {
					t.Errorf("%s depends on front end %s", f, other)
				}
			}
			if d == mod+"internal/daemon" || d == mod+"internal/cli" || d == mod+"config" {
				t.Errorf("%s depends on %s: front ends take their configuration as values", f, d)
			}
		}
		if !hasCore {
			t.Errorf("%s does not use core", f)
		}
	}
}
