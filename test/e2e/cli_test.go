package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	waitUntil(t, 5*time.Second, "metrics listener", func() bool {
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

// With $NOTIFY_SOCKET (systemd Type=notify), READY=1 arrives once serving.
func TestSdNotify(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := newKBS(t, kbs.Config{})
	startProxy(t, k, []string{"NOTIFY_SOCKET=" + sock}, "--kbs-url", k.URL)
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("notify: %q %v", buf[:n], err)
	}
}
