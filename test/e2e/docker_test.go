package e2e

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDockerfile checks the image recipe where no Docker daemon runs (this
// CI): the build stage's RUN commands are executed as written (with /out
// moved to a temporary directory) and must yield a static binary that runs
// on an empty base; the final stage must be scratch, non-root, with the CA
// bundle where Go looks for it. Where `docker info` works, the image is also
// built for real.
func TestDockerfile(t *testing.T) {
	root, _ := filepath.Abs("../..")
	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stage int
	var runs []string
	final := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		switch {
		case word == "FROM":
			stage++
			if stage == 2 {
				final["FROM"] = rest
			}
		case stage == 1 && word == "RUN":
			runs = append(runs, rest)
		case stage == 2:
			final[word] += rest + "\n"
		}
	}
	if stage != 2 || len(runs) == 0 {
		t.Fatalf("want a two-stage Dockerfile with RUN steps, got %d stages, %d RUNs", stage, len(runs))
	}
	if final["FROM"] != "scratch" {
		t.Errorf("final stage FROM %q, want scratch", final["FROM"])
	}
	if u := strings.TrimSpace(final["USER"]); u == "" || strings.HasPrefix(u, "0") || strings.HasPrefix(u, "root") {
		t.Errorf("final stage USER %q: must be non-root", u)
	}
	if !strings.Contains(final["COPY"], "/etc/ssl/certs/ca-certificates.crt") || !strings.Contains(final["COPY"], "/out/cdh-proxy /cdh-proxy") {
		t.Errorf("final stage copies:\n%s", final["COPY"])
	}
	if !strings.Contains(final["ENTRYPOINT"], `"/cdh-proxy"`) {
		t.Errorf("ENTRYPOINT %q", final["ENTRYPOINT"])
	}

	out := t.TempDir()
	for _, run := range runs {
		run = strings.ReplaceAll(run, "/out/", out+"/")
		cmd := exec.Command("sh", "-c", run)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "VERSION=docker-test")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("RUN %s: %v\n%s", run, err, b)
		}
	}
	bin := filepath.Join(out, "cdh-proxy")
	e, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary needs a dynamic loader: it cannot run on scratch")
		}
	}
	e.Close()
	if b, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.Contains(string(b), "docker-test") {
		t.Errorf("built binary: %v %s", err, b)
	}

	if exec.Command("docker", "info").Run() != nil {
		t.Log("no Docker daemon here: checked the recipe, not `docker build` itself")
		return
	}
	if b, err := exec.Command("docker", "build", "-t", "cdh-proxy:e2e", root).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, b)
	}
	if b, err := exec.Command("docker", "run", "--rm", "cdh-proxy:e2e", "version").CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v\n%s", err, b)
	}
}
