package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// TestMeasuredImagePull is the runtime event log end to end, as kata runs
// it: the AA and CDH drop-ins on one simulated TDX guest (shared RTMRs, a
// firmware CCEL), aa.toml turning the log on, a pull through the CDH
// socket, and a KBS whose policy releases secrets only to a guest whose
// attestation shows that pull: it denies before, and after the pull the
// CDH re-attests and the replayed log shows the image.
func TestMeasuredImagePull(t *testing.T) {
	hwDir := t.TempDir()
	hw, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	if err := hw.Save(hwDir); err != nil {
		t.Fatal(err)
	}
	rtmr := fakehw.RTMR{Dir: hwDir}
	if err := rtmr.Firmware(filepath.Join(hwDir, "CCEL")); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(hw.RootPEM())

	reg := imagetest.NewRegistry(t, false)
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "app", Body: "measured\n"}))
	reg.Push(t, "app:v1", img)
	d, _ := img.Digest()
	ref := reg.Host + "/app:v1"
	k := newKBS(t, kbs.Config{TDXRoots: roots, Policy: kbs.Policy{RequireEvent: &kbs.EventRule{
		Domain: "github.com/confidential-containers", Operation: "PullImage",
		Content: map[string]string{"image": ref, "digest": d.String()},
	}}})

	dir, cdhSock, aaSock := sockets(t)
	for _, name := range []string{"confidential-data-hub", "attestation-agent"} {
		if err := os.Symlink(fakeProxyBin, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	ca, _ := os.ReadFile(k.CAFile)
	cdhToml, aaToml := filepath.Join(dir, "cdh.toml"), filepath.Join(dir, "aa.toml")
	mustWrite(t, cdhToml, fmt.Sprintf("socket = %q\n[kbc]\nname = \"cc_kbc\"\nurl = %q\nkbs_cert = '''\n%s'''\n[aa]\naa_socket = %q\n"+
		"[image]\nwork_dir = %q\n[[image.registry_config.registry]]\nlocation = %q\ninsecure = true\n",
		"unix://"+cdhSock, k.URL, ca, "unix://"+aaSock, filepath.Join(t.TempDir(), "image-rs"), reg.Host))
	mustWrite(t, aaToml, fmt.Sprintf("[token_configs.kbs]\nurl = %q\ncert = '''\n%s'''\n[eventlog_config]\nenable_eventlog = true\n", k.URL, ca))
	logDir := t.TempDir()
	env := append(fakeEnv("tdx", hwDir), "CDH_PROXY_LOG_FORMAT=json", "CDH_PROXY_CMDLINE=-", "CDH_PROXY_EVENTLOG_DIR="+logDir)
	start := time.Now()
	aaProc := startDropIn(t, filepath.Join(dir, "attestation-agent"), env, "--attestation_sock", "unix://"+aaSock, "-c", aaToml)
	cdhProc := startDropIn(t, filepath.Join(dir, "confidential-data-hub"), env, "-c", cdhToml)
	waitSocket(t, aaSock, start)
	waitSocket(t, cdhSock, start)
	kc := dialKata(t, cdhSock)

	// Before the pull the guest's log shows nothing: denied.
	if _, err := kc.getResource("kbs:///default/akv/coco_one"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("before the pull: %v, want PermissionDenied", err)
	}
	rtmr3Before, _ := rtmr.Read(context.Background(), 4)
	dg, rootfs, err := kc.pullImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(rootfs, "app")); string(got) != "measured\n" || dg != d.String() {
		t.Fatalf("pull: %q %s", got, dg)
	}
	// The AA extended RTMR3 and logged guest-components' exact record.
	rtmr3, _ := rtmr.Read(context.Background(), 4)
	rec, _ := eventlog.Encode(4, rtmr.Hash(), eventlog.PullImageEvent(ref, d.String()).Text())
	if want := eventlog.Fold(rtmr.Hash(), rtmr3Before, rec.Digest); !bytes.Equal(rtmr3, want) {
		t.Errorf("RTMR3 %x, want the pull folded in %x", rtmr3, want)
	}
	if log, _ := os.ReadFile(filepath.Join(logDir, eventlog.LogName)); !bytes.Equal(log, rec.Entry) {
		t.Errorf("event log %x, want exactly the pull's entry", log)
	}
	// The CDH's token predates the pull: denied, re-attested, allowed.
	if got, err := kc.getResource("kbs:///default/akv/coco_one"); err != nil || string(got) != "a secret" {
		t.Fatalf("after the pull: %q %v", got, err)
	}
	mustContain(t, cdhProc.logs.String(), "older than the latest runtime measurement; re-attesting once")
	mustContain(t, aaProc.logs.String(), `"msg":"runtime event log enabled"`)
	mustContain(t, cdhProc.logs.String(), `"msg":"image pull measured"`)

	// A workload's event through api-server-rest (--features all), into
	// the same log; the guest components' own domain is not the
	// workload's to write.
	if err := os.Symlink(fakeProxyBin, filepath.Join(dir, "api-server-rest")); err != nil {
		t.Fatal(err)
	}
	asr := startProxyProc(t, filepath.Join(dir, "api-server-rest"), env,
		"--features", "all", "-b", "127.0.0.1:0", "--cdh_addr", "unix://"+cdhSock, "--aa_addr", "unix://"+aaSock)
	postAAEL := func(body string) (int, string) {
		resp, err := http.Post(asr.Base+"/aa/aael", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := postAAEL(`{"domain":"example.com","operation":"Configure","content":"mode=strict"}`); code != 200 || body != `{"success":"true"}` {
		t.Errorf("workload event: %d %s", code, body)
	}
	if code, body := postAAEL(`{"domain":"github.com/confidential-containers","operation":"PullImage","content":"{}"}`); code != 403 {
		t.Errorf("forged pull event: %d %s", code, body)
	}
	if log, _ := os.ReadFile(filepath.Join(logDir, eventlog.LogName)); bytes.Count(log, []byte("LEAA")) != 2 || !bytes.Contains(log, []byte("example.com Configure mode=strict")) {
		t.Errorf("event log after the workload's event: %q", log)
	}

	// The AA's own API: a bad event is refused with its reason.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	ac := aa.NewAttestationAgentServiceClient(dialKata(t, aaSock).conn)
	_, err = ac.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "my domain", Operation: "x", Content: "y"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "domain") {
		t.Errorf("bad domain: %v", err)
	}
}
