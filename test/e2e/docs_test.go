package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// shellBlocks returns the ```sh blocks of a Markdown file, in order.
func shellBlocks(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur *strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sh":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	return blocks
}

// TestDocsQuickstart runs docs/quickstart.md as a newcomer would and checks
// that it prints what the page says.
func TestDocsQuickstart(t *testing.T) {
	blocks := shellBlocks(t, "../../docs/quickstart.md")
	if len(blocks) < 5 {
		t.Fatalf("found %d shell blocks", len(blocks))
	}
	script := "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + strings.Join(blocks, "\n")
	cmd := exec.Command("bash", "-c", script)
	root, _ := filepath.Abs("../..")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "WORK="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("quick start failed: %v\n%s", err, out)
	}
	for _, want := range []string{"http://127.0.0.1:", "a secret", "cdh_proxy_cache_hits_total 1", `"status":404`, `{"svn":"1","report_data":"aGVsbG8="}`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
