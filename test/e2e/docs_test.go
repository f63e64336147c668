package e2e

import (
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
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
	if !strings.Contains(script, "PROXY=127.0.0.1:18006\n") {
		t.Fatal("the quick start no longer sets PROXY=127.0.0.1:18006: update this test")
	}
	root, _ := filepath.Abs("../..")
	run := func(proxy string) (string, error) {
		cmd := exec.Command("bash", "-c", strings.Replace(script, "PROXY=127.0.0.1:18006\n", "PROXY="+proxy+"\n", 1))
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "WORK="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// With its port taken, the walkthrough stops at once and shows why,
	// instead of talking to the process that holds the port: only step 3's
	// one-shot get prints the secret.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if out, err := run(taken.Addr().String()); err == nil || !strings.Contains(out, "address already in use") || strings.Count(out, "a secret") != 1 {
		t.Fatalf("quick start with its port taken: %v\n%s", err, out)
	}
	out, err := run("127.0.0.1:" + freePort(t))
	if err != nil {
		t.Fatalf("quick start failed: %v\n%s", err, out)
	}
	for _, want := range []string{"http://127.0.0.1:", "a secret", "cdh_proxy_cache_hits_total 1", `"status":404`, `{"svn":"1","report_data":"aGVsbG8="}`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// docBlock says how to run one README shell block here and what it must
// print. Blocks that start the long suites (make test, bench, soak, fuzz) are
// dry-run with make -n: CI itself is `make test`, and they have their own
// runs; every other command runs as written, with the install prefix moved to
// a temporary directory and `cdh-proxy` running over simulated SEV-SNP.
type docBlock struct {
	match string // a line the block contains
	check func(t *testing.T, out string, prefix string)
}

var readmeBlocks = []docBlock{
	{"make demo", func(t *testing.T, out, _ string) {
		for _, want := range []string{"==> demo OK: the workload got 'a secret'", "go test"} {
			if !strings.Contains(out, want) {
				t.Errorf("make demo / make -n test: output lacks %q", want)
			}
		}
	}},
	{"install -m 0755 bin/cdh-proxy /usr/local/bin/cdh-proxy", func(t *testing.T, _, prefix string) {
		for _, n := range []string{"attestation-agent", "confidential-data-hub", "api-server-rest"} {
			if target, err := os.Readlink(filepath.Join(prefix, n)); err != nil || target != "cdh-proxy" {
				t.Errorf("%s -> %q (%v)", n, target, err)
			}
		}
		out, err := exec.Command(filepath.Join(prefix, "cdh-proxy"), "version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cdh-proxy") {
			t.Errorf("installed binary: %v %s", err, out)
		}
	}},
	{"cdh-proxy evidence --attester snp --runtime-data hello", func(t *testing.T, out, _ string) {
		if n := strings.Count(out, `"attestation_report":{`); n != 3 {
			t.Errorf("%d evidence documents, want 3:\n%s", n, out)
		}
		// "hello" as runtime data, raw and base64, zero-padded to 64 bytes.
		if n := strings.Count(out, `"report_data":[104,101,108,108,111,0,`); n != 2 {
			t.Errorf("report_data holds hello %d times, want 2", n)
		}
	}},
	{"make build", func(t *testing.T, out, _ string) {
		root, _ := filepath.Abs("../..")
		for _, b := range []string{"cdh-proxy", "testkbs", "fetch", "baseline"} {
			if _, err := os.Stat(filepath.Join(root, "bin", b)); err != nil {
				t.Errorf("make build: %v", err)
			}
		}
		for _, want := range []string{"test/bench", "go vet", "fuzz", "test/soak", "make test"} {
			if !strings.Contains(out, want) {
				t.Errorf("dry runs lack %q:\n%s", want, out)
			}
		}
	}},
}

var (
	longTarget   = regexp.MustCompile(`(?m)^make (test|bench|lint|fuzz-short|soak)\b`)
	ciRun        = regexp.MustCompile(`(?m)^bash \.ci/run\b`)
	cdhProxyLine = regexp.MustCompile(`(?m)^cdh-proxy `)
	flagName     = regexp.MustCompile(`(?:^|[\s\x60\[(|])--?([a-z][a-z0-9_-]+)`)
)

// TestReadmeShellBlocks runs every shell block of the README as a newcomer
// would, and fails on a block it does not know how to run, so the README
// cannot gain an untested command.
// untracked lists the files under the repository that git does not track
// and does not ignore: what a test run left behind.
func untracked(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	return string(out)
}

func TestReadmeShellBlocks(t *testing.T) {
	root, _ := filepath.Abs("../..")
	// Nothing the README runs may write into the checkout (make demo once
	// did, with DEMO_DIR absolute). bin/ and .demo are ignored by git.
	before := untracked(t, root)
	t.Cleanup(func() {
		if after := untracked(t, root); after != before {
			t.Errorf("the README's commands left files in the checkout:\n%s", after)
		}
	})
	blocks := shellBlocks(t, "../../README.md")
	seen := map[string]bool{}
	for i, block := range blocks {
		var h *docBlock
		for j := range readmeBlocks {
			if strings.Contains(block, readmeBlocks[j].match) {
				h = &readmeBlocks[j]
			}
		}
		if h == nil {
			t.Errorf("README shell block %d is unknown to this test; teach readmeBlocks to run it:\n%s", i, block)
			continue
		}
		seen[h.match] = true
		script := longTarget.ReplaceAllString(block, "make -n $1")
		script = ciRun.ReplaceAllString(script, "bash -n .ci/run && cat .ci/run #")
		script = cdhProxyLine.ReplaceAllLiteralString(script, `"$CDH_PROXY" `)
		prefix := t.TempDir()
		script = strings.ReplaceAll(script, "/usr/local/bin", prefix)

		hw, err := fakehw.NewSNP("Milan")
		if err != nil {
			t.Fatal(err)
		}
		hwDir := t.TempDir()
		if err := hw.Save(hwDir); err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+script)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CDH_PROXY="+fakeProxyBin,
			"DEMO_BIND=127.0.0.1:"+port, "DEMO_DIR="+t.TempDir())
		cmd.Env = append(cmd.Env, fakeEnv("snp", hwDir)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README block %d failed: %v\n--- script\n%s--- output\n%s", i, err, script, out)
			continue
		}
		h.check(t, string(out), prefix)
	}
	for _, h := range readmeBlocks {
		if !seen[h.match] {
			t.Errorf("no README block runs %q any more: update readmeBlocks", h.match)
		}
	}
}

// TestReadmeFlagsExist checks that every flag the README's synopses and
// flag table name is one the binaries accept.
func TestReadmeFlagsExist(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	help := func(args ...string) string {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		return string(out)
	}
	root, _ := filepath.Abs("../..")
	serveHelp := help(proxyBin, "serve", "-h")
	kbsHelp := help("go", "run", filepath.Join(root, "test/cmd/testkbs"), "-h")
	checked := 0
	for _, line := range strings.Split(string(data), "\n") {
		var helpText, what string
		switch {
		case strings.HasPrefix(line, "cdh-proxy serve "), strings.HasPrefix(line, "| `--"):
			helpText, what = serveHelp, "cdh-proxy serve"
		case strings.HasPrefix(line, "bin/testkbs "):
			helpText, what = kbsHelp, "bin/testkbs"
		default:
			continue
		}
		if strings.HasPrefix(line, "| ") { // a table row: only its first column
			line = strings.SplitN(line[1:], "|", 2)[0]
		}
		for _, m := range flagName.FindAllStringSubmatch(line, -1) {
			checked++
			if !strings.Contains(helpText, "\n  -"+m[1]+" ") && !strings.Contains(helpText, "\n  -"+m[1]+"\n") {
				t.Errorf("README names %s flag --%s, which %s -h does not list", what, m[1], what)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d flags: the README's synopsis or table moved", checked)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// TestDocsAzureKeyVault runs the Key Vault walkthrough's shell blocks: its
// link-akv.sh against a CSI-style volume, whose links the test KBS's LocalFs
// store (current Trustee's layout) then serves, and the workload's command
// against a proxy in front of it. It checks what the page promises: a
// rotation arrives through the links, an object added later is missing
// until linked, and the kustomize patch mounts what the script expects.
// Liberties: the proxy's test address replaces 127.0.0.1:8006, a machine
// without curl uses the repo's fetch stand-in, and the paths are a temp dir's.
func TestDocsAzureKeyVault(t *testing.T) {
	const doc = "../../docs/azure-key-vault.md"
	blocks := shellBlocks(t, doc)
	if len(blocks) != 2 || !strings.Contains(blocks[0], "link-akv.sh") || !strings.Contains(blocks[1], "curl ") {
		t.Fatalf("want the link-akv.sh block and the workload's block, found %d blocks", len(blocks))
	}
	linkScript, workload := blocks[0], blocks[1]
	page, _ := os.ReadFile(doc)
	for _, want := range []string{
		"mountPath: /mnt/akv", "command: [\"sh\", \"/scripts/link-akv.sh\"]", "- link-akv.sh",
		"value: /opt/confidential-containers/storage/local_fs/repository",
		"mountPath: /opt/confidential-containers/storage/local_fs }", "secretProviderClass: akv-kbs",
	} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the kustomize patch lacks %q", want)
		}
	}
	for _, want := range []string{"AKV_MOUNT=${AKV_MOUNT:-/mnt/akv}", "REPOSITORY=${REPOSITORY:-/opt/confidential-containers/storage/local_fs/repository}"} {
		if !strings.Contains(linkScript, want) {
			t.Errorf("link-akv.sh defaults disagree with the patch: lacks %q", want)
		}
	}

	dir := t.TempDir()
	mnt, storage := filepath.Join(dir, "mnt", "akv"), filepath.Join(dir, "storage")
	csi := func(files map[string]string) {
		t.Helper()
		b := map[string][]byte{}
		for k, v := range files {
			b[k] = []byte(v)
		}
		if err := kbs.WriteCSI(mnt, b); err != nil {
			t.Fatal(err)
		}
	}
	link := func() string {
		t.Helper()
		cmd := exec.Command("sh", "-c", linkScript)
		cmd.Env = append(os.Environ(), "AKV_MOUNT="+mnt, "REPOSITORY="+filepath.Join(storage, "repository"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("link-akv.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	csi(map[string]string{"coco_one": "a secret", "coco_two": "another secret"})
	out := link()
	mustContain(t, out, `default\x2Fakv\x2Fcoco_one -> `+mnt+"/coco_one")
	if again := link(); again != "" {
		t.Fatalf("a second run must leave correct links alone, it said: %s", again)
	}
	if target, err := os.Readlink(filepath.Join(storage, "repository", `default\x2Fakv\x2Fcoco_two`)); err != nil || target != filepath.Join(mnt, "coco_two") {
		t.Fatalf("flat name for coco_two: %q %v", target, err)
	}

	srv, err := kbs.New(kbs.Config{Store: kbs.LocalFsStore{Dir: storage}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	p := startProxy(t, nil, nil, "--kbs-url", ts.URL, "--cache-ttl", "0")
	root, _ := filepath.Abs("../..")
	script := "set -euo pipefail\ncommand -v curl >/dev/null || curl() { go run " + filepath.Join(root, "test/cmd/fetch") + " \"$1\"; }\n" +
		strings.ReplaceAll(workload, "http://127.0.0.1:8006", p.Base)
	cmd := exec.Command("bash", "-c", script)
	var stderr strings.Builder
	cmd.Stderr = &stderr // curl's progress meter
	got, err := cmd.Output()
	if err != nil || string(got) != "a secret" {
		t.Fatalf("%v: %q\n%s", err, got, stderr.String())
	}
	// A rotation behind ..data arrives through the unchanged links.
	csi(map[string]string{"coco_one": "rotated", "coco_two": "another secret"})
	if r := p.get(cocoOne); r.Body != "rotated" {
		t.Fatalf("after rotation: %d %q", r.Status, r.Body)
	}
	// An object added later is missing until the linker runs again.
	csi(map[string]string{"coco_one": "rotated", "coco_two": "another secret", "coco_three": "new object"})
	if r := p.get("/cdh/resource/default/akv/coco_three"); r.Status != 404 {
		t.Fatalf("unlinked new object: %d %q, want 404 as the page says", r.Status, r.Body)
	}
	mustContain(t, link(), "coco_three")
	if r := p.get("/cdh/resource/default/akv/coco_three"); r.Status != 200 || r.Body != "new object" {
		t.Fatalf("linked new object: %d %q", r.Status, r.Body)
	}
}

// Every doc with shell blocks has a test that runs them.
func TestEveryDocShellBlockRuns(t *testing.T) {
	tested := map[string]string{
		"quickstart.md": "TestDocsQuickstart", "azure.md": "TestDocsAzure", "azure-key-vault.md": "TestDocsAzureKeyVault",
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		if n := len(shellBlocks(t, d)); n > 0 && tested[filepath.Base(d)] == "" {
			t.Errorf("%s has %d shell blocks that no test runs: add one beside TestDocsQuickstart", d, n)
		}
	}
}
