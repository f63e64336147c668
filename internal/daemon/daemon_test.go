package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/config"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// testKBS is a test KBS holding default/akv/coco_one, and its URL.
func testKBS(t *testing.T) (*kbs.Server, string) {
	t.Helper()
	store := kbs.LocalFsStore{Dir: t.TempDir()}
	if err := store.Write("default", "akv", "coco_one", []byte("a secret")); err != nil {
		t.Fatal(err)
	}
	srv, err := kbs.New(kbs.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return srv, ts.URL
}

func testConfig(t *testing.T, f config.Flags) *config.Config {
	t.Helper()
	_, url := testKBS(t)
	f.KBSURLs = []string{url}
	f.Attester = "sample"
	if f.Bind == "" {
		f.Bind = "127.0.0.1:0"
	}
	f.Cmdline, f.InitDataDir = "-", "-"
	cfg, err := config.Load(f, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The daemon in process, over real sockets: built, run, serving, stopped,
// and every listener and socket released.
func TestDaemonServesAndStops(t *testing.T) {
	dir, err := os.MkdirTemp("", "dmn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := "unix://" + filepath.Join(dir, "cdh.sock")
	cfg := testConfig(t, config.Flags{CDHSocket: &sock})
	var notified []string
	d, err := New(context.Background(), cfg, ServeParts(cfg), Options{Notify: func(s string) error { notified = append(notified, s); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"http", "cdh-ttrpc", "cache-sweeper", "startup-attestation", "credentials"}
	if !slices.Equal(d.Tasks(), want) {
		t.Fatalf("tasks %q, want %q", d.Tasks(), want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	resp, err := http.Get("http://" + d.HTTPAddr() + "/cdh/resource/default/akv/coco_one")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "a secret" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !slices.Equal(notified, []string{"READY=1"}) {
		t.Fatalf("notified %q", notified)
	}
	if _, err := net.Dial("tcp", d.HTTPAddr()); err == nil {
		t.Fatal("HTTP listener still open after Run returned")
	}
	if _, err := os.Stat(filepath.Join(dir, "cdh.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("CDH socket left behind: %v", err)
	}
}

// A failure while building releases what was already bound.
func TestNewReleasesOnFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bind := free.Addr().String()
	free.Close()
	cfg := testConfig(t, config.Flags{Bind: bind, MetricsBind: taken.Addr().String()})
	if _, err := New(context.Background(), cfg, ServeParts(cfg), Options{}); err == nil {
		t.Fatal("New succeeded with --metrics-bind on a taken port")
	}
	again, err := net.Listen("tcp", bind)
	if err != nil {
		t.Fatalf("the HTTP listener bound before the failure was not released: %v", err)
	}
	again.Close()
	cfg.MetricsBind = ""
	if _, err := New(context.Background(), cfg, Parts{}, Options{}); !errors.As(err, new(ConfigError)) {
		t.Fatalf("nothing to serve: %v, want a ConfigError", err)
	}
}

func TestRunTasksFirstErrorStopsTheRest(t *testing.T) {
	boom := errors.New("boom")
	stopped := make(chan struct{})
	err := RunTasks(context.Background(),
		Task{"fails", func(context.Context) error { return boom }},
		Task{"waits", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }},
		Task{"ends early", func(context.Context) error { return nil }},
	)
	if !errors.Is(err, boom) || err.Error() != "fails: boom" {
		t.Fatalf("%v", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("RunTasks returned before every task stopped")
	}
}

// The drop-in processes attest only when something needs a token: the
// CDH process when a request (or a [[credentials]] entry) needs a secret,
// the AA process when asked for a token. Only the sidecar (HTTP) attests
// ahead of its first request.
func TestDropInsAttestOnlyWhenAsked(t *testing.T) {
	srv, url := testKBS(t)
	dir, err := os.MkdirTemp("", "dmn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := "unix://" + filepath.Join(dir, "s.sock")
	load := func() *config.Config {
		cfg, err := config.Load(config.Flags{KBSURLs: []string{url}, Attester: "sample", Cmdline: "-", InitDataDir: "-",
			CDHSocket: &sock, AASocket: &sock}, func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, c := range []struct {
		name  string
		parts Parts
		creds bool
		want  []string
	}{
		{"confidential-data-hub", Parts{CDH: true}, false, []string{"cdh-ttrpc", "cache-sweeper", "credentials"}},
		{"attestation-agent", Parts{AA: true}, false, []string{"aa-ttrpc", "cache-sweeper", "credentials"}},
		{"serve", Parts{HTTP: true}, false, []string{"http", "cache-sweeper", "startup-attestation", "credentials"}},
	} {
		cfg := load()
		d, err := New(context.Background(), cfg, c.parts, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.Tasks(), c.want) {
			t.Errorf("%s: tasks %q, want %q", c.name, d.Tasks(), c.want)
		}
		d.close()
	}

	// A CDH process with [[credentials]] attests once, to fetch them.
	cfg := load()
	cfg.Credentials = []config.Credential{{ResourceURI: "kbs:///default/akv/coco_one", Path: filepath.Join(dir, "cred")}}
	cfg.CredDir = dir
	d, err := New(context.Background(), cfg, Parts{CDH: true}, Options{Notify: func(string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	testutil.Eventually(t, 20*time.Second, "the credential", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "cred"))
		return string(b) == "a secret"
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := srv.Counts().Attest; n != 1 {
		t.Fatalf("%d attestations for one credential, want 1", n)
	}
}

// The AA process keeps the event log when aa.toml enables it: on a TEE
// without runtime registers it starts and says so; on TDX it opens the
// log, and a write-ahead file it cannot finish refuses the start. The CDH
// process with an unusable AA socket starts and warns.
func TestDaemonEventLog(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := testConfig(t, config.Flags{EventLogDir: t.TempDir()})
	cfg.EventLog = true
	cfg.AASocket = "unix://" + filepath.Join(t.TempDir(), "aa.sock")
	d, err := New(context.Background(), cfg, Parts{AA: true}, Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	d.close()
	if !strings.Contains(logs.String(), "runtime measurements are not supported here") || !strings.Contains(logs.String(), "the sample TEE has no runtime measurement registers") {
		t.Errorf("no NOT_SUPPORTED warning: %s", logs.String())
	}

	hwDir := t.TempDir()
	tdxHW, err := fakehw.NewTDX()
	if err != nil {
		t.Fatal(err)
	}
	hw := Hardware{TSM: tdxHW.ConfigFS(), DevDir: t.TempDir(), TPM: filepath.Join(hwDir, "none"), RTMR: fakehw.RTMR{Dir: hwDir}}
	cfg.Attester = "tdx"
	d, err = New(context.Background(), cfg, Parts{AA: true}, Options{Hardware: hw, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	d.close()
	if _, err := os.Stat(filepath.Join(cfg.EventLogDir, eventlog.LogName)); err != nil {
		t.Errorf("log not opened: %v", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.EventLogDir, eventlog.WALName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	var ce *eventlog.CorruptError
	if _, err := New(context.Background(), cfg, Parts{AA: true}, Options{Hardware: hw, Logger: logger}); !errors.As(err, &ce) {
		t.Errorf("corrupt write-ahead file: %v, want a refused start", err)
	}

	cfg = testConfig(t, config.Flags{})
	cfg.CDHSocket = "unix://" + filepath.Join(t.TempDir(), "cdh.sock")
	cfg.AAAddr = "vsock://3:1"
	logs.Reset()
	d, err = New(context.Background(), cfg, Parts{CDH: true}, Options{Logger: logger})
	if err != nil {
		t.Fatalf("bad [aa] aa_socket: %v", err)
	}
	d.close()
	if !strings.Contains(logs.String(), "pulled images are not measured") {
		t.Errorf("no warning for a bad AA socket: %s", logs.String())
	}
}

// On an Azure vTPM the default init_pcr 17 is refused at every extend:
// the start says so, and init_pcr 23 measures.
func TestDaemonEventLogAzurePCR(t *testing.T) {
	vm, err := fakehw.NewAzureCVM("az-snp-vtpm", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.Close)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := testConfig(t, config.Flags{EventLogDir: t.TempDir()})
	cfg.EventLog, cfg.Attester, cfg.TPM, cfg.AzureIMDS = true, "az-snp-vtpm", vm.TPM, vm.IMDS
	cfg.AASocket = "unix://" + filepath.Join(t.TempDir(), "aa.sock")
	d, err := New(context.Background(), cfg, Parts{AA: true}, Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	d.close()
	if !strings.Contains(logs.String(), "set init_pcr = 23") {
		t.Errorf("no warning for init_pcr 17 on a vTPM: %s", logs.String())
	}
	logs.Reset()
	cfg.InitPCR = 23
	d, err = New(context.Background(), cfg, Parts{AA: true}, Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	d.close()
	if strings.Contains(logs.String(), "init_pcr = 23") {
		t.Errorf("warned for init_pcr 23: %s", logs.String())
	}
}
