package guestvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The drop-in names, where kata-agent's built-in launch plan looks for
// them; each is a link to the one production binary.
var dropIns = []string{"attestation-agent", "confidential-data-hub", "api-server-rest"}

// BuildProject builds the production binary (cmd/cdh-proxy, static, as
// `make build` does) and the guest init (test/cmd/guest-init) from the
// module at root, and writes the initramfs part holding them to
// dir/project.cpio, which it returns. Go's build cache makes a repeat cheap.
func BuildProject(ctx context.Context, root, dir string) (string, error) {
	bins := map[string]string{"cdh-proxy": "./cmd/cdh-proxy", "guest-init": "./test/cmd/guest-init"}
	for name, pkg := range bins {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-tags=containers_image_openpgp",
			"-ldflags=-s -w -X main.version=guest", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("guest: go build %s: %w\n%s", pkg, err, strings.TrimSpace(string(out)))
		}
	}
	path := filepath.Join(dir, "project.cpio")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	a := newArchive(f)
	a.copyFile("init", filepath.Join(dir, "guest-init"))
	a.symlink("bin/kata-ttrpc", "/init")
	a.copyFile("usr/local/bin/cdh-proxy", filepath.Join(dir, "cdh-proxy"))
	for _, n := range dropIns {
		a.symlink("usr/local/bin/"+n, "cdh-proxy")
	}
	if err := a.close(); err != nil {
		return "", err
	}
	return path, f.Close()
}
