package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// runCLI runs a one-shot cdh-proxy command and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(proxyBin, args...)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

func TestGetCommand(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	common := []string{"get", "--attester", "sample", "--kbs-url", k.URL, "--kbs-cert", k.CAFile, "--cmdline", "-", "--initdata-dir", "-", "--log-level", "error"}
	for _, arg := range []string{"default/akv/coco_one", "kbs:///default/akv/coco_one"} {
		out, errOut, code := runCLI(t, append(common, arg)...)
		if code != 0 || out != "a secret" {
			t.Fatalf("get %s: exit %d stdout %q stderr %s", arg, code, out, errOut)
		}
	}
	f := filepath.Join(t.TempDir(), "secret")
	if _, errOut, code := runCLI(t, append(common, "-o", f, "default/akv/coco_two")...); code != 0 {
		t.Fatalf("get -o: exit %d: %s", code, errOut)
	}
	if b, err := os.ReadFile(f); err != nil || string(b) != "another secret" {
		t.Fatalf("-o file: %q %v", b, err)
	}
	if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
		t.Fatalf("-o file mode %v", fi.Mode())
	}
	if out, errOut, code := runCLI(t, append(common, "default/akv/nope")...); code != 4 || out != "" || !strings.Contains(errOut, "not found") {
		t.Fatalf("missing: exit %d stdout %q stderr %s", code, out, errOut)
	}
	if _, _, code := runCLI(t, append(common, "default/../x")...); code != 2 {
		t.Fatalf("bad path: exit %d", code)
	}
	k.SetPolicy(kbs.Policy{DenySample: true})
	if _, errOut, code := runCLI(t, append(common, "default/akv/coco_one")...); code != 3 || !strings.Contains(errOut, "denied") {
		t.Fatalf("denied: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "get", "--cmdline", "-", "--initdata-dir", "-", "default/akv/coco_one"); code != 78 || !strings.Contains(errOut, "no KBS URL") {
		t.Fatalf("no config: exit %d: %s", code, errOut)
	}
}

func TestVersionCommand(t *testing.T) {
	out, _, code := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(out, "cdh-proxy ") || !strings.Contains(out, "github.com/cdh-proxy/cdh-proxy") || !strings.Contains(out, "go go1.") {
		t.Fatalf("version: %d %q", code, out)
	}
}

func TestMetricsBind(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--metrics-bind", "127.0.0.1:0")
	var addr string
	testutil.Eventually(t, 5*time.Second, "metrics listener", func() bool {
		for _, l := range strings.Split(p.logs.String(), "\n") {
			if strings.Contains(l, `"msg":"serving metrics"`) {
				var m struct{ Addr string }
				_ = json.Unmarshal([]byte(l), &m)
				addr = m.Addr
			}
		}
		return addr != ""
	})
	r, err := doGet(context.Background(), "http://"+addr+"/metrics")
	if err != nil || r.Status != 200 || !strings.Contains(r.Body, "cdh_proxy_cache_hits_total") {
		t.Fatalf("metrics listener: %v %d", err, r.Status)
	}
	if r, _ := doGet(context.Background(), "http://"+addr+cocoOne); r.Status != 404 {
		t.Fatalf("secrets on the metrics listener: %d", r.Status)
	}
}

// With $NOTIFY_SOCKET (systemd Type=notify), READY=1 arrives once serving —
// from `serve` and from each drop-in name, which the guest-components unit
// drop-ins in deploy/systemd turn into Type=notify services.
func TestSdNotify(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	dir, cdhSock, aaSock := sockets(t)
	for _, name := range []string{"confidential-data-hub", "attestation-agent", "api-server-rest"} {
		if err := os.Symlink(proxyBin, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"CDH_PROXY_CMDLINE=-", "CDH_PROXY_LOG_FORMAT=json", "AA_KBC_PARAMS=cc_kbc::" + k.URL}
	for _, tc := range []struct {
		name  string
		start func(env []string)
	}{
		{"serve", func(env []string) { startProxyBin(t, proxyBin, k, env, "--attester", "sample", "--kbs-url", k.URL) }},
		{"attestation-agent", func(env []string) {
			startDropIn(t, filepath.Join(dir, "attestation-agent"), env, "--attestation_sock", "unix://"+aaSock, "--cdh-proxy-attester", "sample")
		}},
		{"confidential-data-hub", func(env []string) {
			cdhToml := filepath.Join(dir, "cdh.toml")
			mustWrite(t, cdhToml, fmt.Sprintf("socket = %q\n[kbc]\nname = \"cc_kbc\"\nurl = %q\n", "unix://"+cdhSock, k.URL))
			startDropIn(t, filepath.Join(dir, "confidential-data-hub"), env, "-c", cdhToml, "--cdh-proxy-attester", "sample")
		}},
		{"api-server-rest", func(env []string) {
			startProxyProc(t, filepath.Join(dir, "api-server-rest"), env, "-b", "127.0.0.1:0", "--cdh_addr", "unix://"+cdhSock, "--aa_addr", "unix://"+aaSock)
		}},
	} {
		sock := filepath.Join(dir, "notify-"+tc.name)
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		tc.start(append(env, "NOTIFY_SOCKET="+sock))
		buf := make([]byte, 64)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := conn.ReadFromUnix(buf)
		conn.Close()
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Errorf("%s: notify %q %v", tc.name, buf[:n], err)
		}
	}
}

// The GC target is Go's default (100 %); GOGC in the environment sets it.
func TestGCPercent(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	for _, tc := range []struct {
		env  []string
		want float64
	}{{nil, 100}, {[]string{"GOGC=50"}, 50}} {
		p := startProxyBin(t, proxyBin, k, tc.env, "--attester", "sample", "--kbs-url", k.URL) // a process setting
		if got := metric(t, p, "go_gc_gogc_percent"); got != tc.want {
			t.Errorf("env %v: go_gc_gogc_percent = %v, want %v", tc.env, got, tc.want)
		}
	}
}
