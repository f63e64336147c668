// Package e2e runs cdh-proxy against the strict test KBS: the daemon in
// process, built exactly as the binary builds it (startProxy), and the real
// binary for what only a process has: argv[0] names, signals, sd_notify,
// exit codes, process settings (startProxyBin, execProxy).
package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/cli"
	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

// proxyBin is the production build; fakeProxyBin is test/cmd/cdh-proxy-fakehw,
// the same commands handed a simulator ($CDH_PROXY_FAKEHW) as hardware.
var proxyBin, fakeProxyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cdh-proxy-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	proxyBin = filepath.Join(dir, "cdh-proxy")
	fakeProxyBin = filepath.Join(dir, "cdh-proxy-fakehw")
	for _, b := range [][]string{
		{"build", "-race", "-o", proxyBin, "../../cmd/cdh-proxy"},
		{"build", "-race", "-o", fakeProxyBin, "../../test/cmd/cdh-proxy-fakehw"},
	} {
		build := exec.Command("go", b...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building cdh-proxy:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testKBS is an in-process strict KBS over HTTPS whose default/akv is a
// Secrets Store CSI-style volume, served in one of Trustee's two layouts.
type testKBS struct {
	*kbs.Server
	URL    string
	CAFile string
	Root   string    // store directory
	Layout string    // layoutLocalFs or layoutTree
	Store  kbs.Store // for plain (non-CSI) resources
	close  func()    // stops the server (the KBS goes down)
}

// The two store layouts of Trustee's LocalFs resource backend.
const (
	layoutLocalFs = "localfs" // current: flat names, CSI volume linked in per object
	layoutTree    = "tree"    // Trustee <= v0.18: CSI volume mounted in the tree
)

// newKBS serves current Trustee's layout, with the test KBS's plugins.
func newKBS(t *testing.T, cfg kbs.Config) *testKBS {
	t.Helper()
	return newKBSLayout(t, cfg, layoutLocalFs)
}

func newKBSLayout(t *testing.T, cfg kbs.Config, layout string) *testKBS {
	t.Helper()
	root := t.TempDir()
	k := &testKBS{Root: root, Layout: layout}
	switch layout {
	case layoutLocalFs:
		k.Store = kbs.LocalFsStore{Dir: root}
	case layoutTree:
		k.Store = kbs.TreeStore{Dir: root}
	default:
		t.Fatalf("layout %q", layout)
	}
	if err := k.WriteCSI("default", "akv", map[string][]byte{
		"coco_one": []byte("a secret"), "coco_two": []byte("another secret"),
	}); err != nil {
		t.Fatal(err)
	}
	cfg.Store = k.Store
	if cfg.Plugins == nil {
		cfg.Plugins = kbs.DefaultPlugins()
	}
	srv, err := kbs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cert, caPEM, err := kbs.NewTLS()
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	k.Server, k.URL, k.CAFile, k.close = srv, ts.URL, ca, ts.Close
	return k
}

// WriteCSI writes (or rotates) files as a CSI volume serving repo/typ. In
// the LocalFs layout the volume sits at a side path, <root>/mnt/<repo>-<typ>,
// and each object is linked in under its flat name, as
// docs/azure-key-vault.md has operators do; in the tree layout it is the
// <root>/<repo>/<typ> directory itself.
func (k *testKBS) WriteCSI(repo, typ string, files map[string][]byte) error {
	if k.Layout == layoutTree {
		return kbs.WriteCSI(filepath.Join(k.Root, repo, typ), files)
	}
	mnt := filepath.Join(k.Root, "mnt", repo+"-"+typ)
	if err := kbs.WriteCSI(mnt, files); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	return kbs.LocalFsStore{Dir: k.Root}.LinkObjects(repo, typ, mnt, names...)
}

// proxyProc is a running cdh-proxy: a child process (p set) or the daemon
// in this process (stopInProcess set).
type proxyProc struct {
	t    *testing.T
	p    *proc.Proc
	Base string // http://127.0.0.1:port
	logs *proc.Buffer

	stopInProcess func() error
}

// noTEE is a machine without any TEE, never the test machine's own devices
// (nor its firmware log).
func noTEE(t *testing.T) daemon.Hardware {
	dir := t.TempDir()
	return daemon.Hardware{TSM: fakehw.NoConfigFS(), DevDir: dir, TPM: filepath.Join(dir, "tpmrm0"), CCEL: filepath.Join(dir, "CCEL")}
}

// startProxy runs `cdh-proxy serve --attester sample args…` in this process
// on 127.0.0.1:0, trusting the KBS's CA: the daemon exactly as the binary
// builds it (internal/cli, internal/daemon), on a machine with no TEE. env
// stands for the process environment. Tests of what only the binary has
// (signals, argv[0], sd_notify, exit codes) use startProxyBin.
func startProxy(t *testing.T, k *testKBS, env []string, args ...string) *proxyProc {
	t.Helper()
	return startInProcess(t, k, noTEE(t), env, append([]string{"--attester", "sample"}, args...)...)
}

// startInProcess is startProxy on the given hardware, without a default attester.
func startInProcess(t *testing.T, k *testKBS, hw daemon.Hardware, env []string, args ...string) *proxyProc {
	t.Helper()
	base := []string{"--bind", "127.0.0.1:0", "--cmdline", "-", "--initdata-dir", "-"}
	if k != nil {
		base = append(base, "--kbs-cert", k.CAFile)
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	cfg, err := cli.ServeConfig(append(base, args...), func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	logs := &proc.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, daemon.ServeParts(cfg), daemon.Options{Hardware: hw, Logger: log, Notify: func(string) error { return nil }})
	if err != nil {
		cancel()
		t.Fatalf("%v\n%s", err, logs)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	pp := &proxyProc{t: t, Base: "http://" + d.HTTPAddr(), logs: logs, stopInProcess: func() error {
		cancel()
		return <-done
	}}
	t.Cleanup(pp.stop)
	return pp
}

// startProxyBin is startProxy for a given binary, without a default attester.
func startProxyBin(t *testing.T, bin string, k *testKBS, env []string, args ...string) *proxyProc {
	t.Helper()
	base := []string{"serve", "--bind", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug", "--cmdline", "-", "--initdata-dir", "-"}
	if k != nil {
		base = append(base, "--kbs-cert", k.CAFile)
	}
	return startProxyProc(t, bin, env, append(base, args...)...)
}

// startDropIn starts a drop-in personality that serves only sockets.
func startDropIn(t *testing.T, bin string, env []string, args ...string) *proxyProc {
	t.Helper()
	return startProc(t, bin, env, "serving ttrpc", args...)
}

// startProxyProc starts bin with exactly args and waits for its HTTP listener.
func startProxyProc(t *testing.T, bin string, env []string, args ...string) *proxyProc {
	t.Helper()
	return startProc(t, bin, env, "listening", args...)
}

func startProc(t *testing.T, bin string, env []string, readyMsg string, args ...string) *proxyProc {
	t.Helper()
	p, err := proc.Start(bin, env, readyMsg, args...)
	if err != nil {
		t.Fatal(err)
	}
	pp := &proxyProc{t: t, p: p, Base: "http://" + p.Addr, logs: p.Logs}
	t.Cleanup(pp.stop)
	return pp
}

// stop ends the daemon (a child gets SIGTERM) and requires a clean exit.
// It may be called twice.
func (p *proxyProc) stop() {
	if p.stopInProcess != nil {
		stop := p.stopInProcess
		p.stopInProcess = func() error { return nil }
		if err := stop(); err != nil {
			p.t.Errorf("cdh-proxy exit: %v\n%s", err, p.logs)
		}
	} else if err := p.p.Stop(15 * time.Second); err != nil {
		p.t.Errorf("cdh-proxy exit: %v\n%s", err, p.logs)
	}
	if p.t.Failed() {
		p.t.Logf("cdh-proxy logs:\n%s", p.logs)
	}
}

var client = &http.Client{
	Timeout:   60 * time.Second,
	Transport: &http.Transport{MaxConnsPerHost: 256, MaxIdleConnsPerHost: 256},
}

type reply struct {
	Status int
	Header http.Header
	Body   string
}

func (p *proxyProc) get(path string, hdr ...string) reply {
	p.t.Helper()
	r, err := doGet(context.Background(), p.Base+path, hdr...)
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

func doGet(ctx context.Context, url string, hdr ...string) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return reply{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, err
}

func mustContain(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%q does not contain %q", s, sub)
	}
}

// execProxy runs cdh-proxy to completion and returns its combined output.
func execProxy(args ...string) (string, error) {
	return execProxyEnv(proxyBin, nil, args...)
}

func execProxyEnv(bin string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// deadAddr returns a loopback address nothing listens on: a KBS that is down.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
