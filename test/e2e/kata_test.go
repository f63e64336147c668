package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/sealed"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// sealedFixture puts a signing key and two secrets in the KBS and returns
// sealed secrets pointing at them, as an operator would prepare them.
type sealedFixture struct {
	envValue, fileValue string
	key                 *ecdsa.PrivateKey
}

func newSealedFixture(t *testing.T, k *testKBS) sealedFixture {
	t.Helper()
	store := k.Store
	for tag, v := range map[string][]byte{"env-secret": []byte("db-password-42"), "file-secret": []byte("-----tls key-----")} {
		if err := store.Write("default", "sealed-secret", tag, v); err != nil {
			t.Fatal(err)
		}
	}
	key, err := kbs.WriteSealingKey(store)
	if err != nil {
		t.Fatal(err)
	}
	kid := kbs.SealingKeyID
	env, err := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/env-secret"), kid, key)
	if err != nil {
		t.Fatal(err)
	}
	file, err := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/file-secret"), kid, key)
	if err != nil {
		t.Fatal(err)
	}
	return sealedFixture{envValue: env, fileValue: file, key: key}
}

// kataClient talks to CDH the way kata-agent does: one ttrpc connection,
// made once, each call under a 50 s deadline (agent.cdh_api_timeout).
type kataClient struct {
	t    *testing.T
	conn *ttrpc.Client
}

func dialKata(t *testing.T, socket string) *kataClient {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return &kataClient{t: t, conn: c}
}

func (k *kataClient) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 50*time.Second)
}

func (k *kataClient) unseal(secret string) ([]byte, error) {
	ctx, cancel := k.ctx()
	defer cancel()
	out, err := cdh.NewSealedSecretServiceClient(k.conn).UnsealSecret(ctx, &cdh.UnsealSecretInput{Secret: []byte(secret)})
	return out.GetPlaintext(), err
}

// secureMountServed checks SecureMount is served (not Unimplemented) by
// asking for a device that does not exist: NotFound, naming it. The real
// volumes are set up in the guest tests (test/guest): this kernel has no
// device-mapper.
func (k *kataClient) secureMountServed() {
	k.t.Helper()
	ctx, cancel := k.ctx()
	defer cancel()
	_, err := cdh.NewSecureMountServiceClient(k.conn).SecureMount(ctx, &cdh.SecureMountRequest{VolumeType: "block-device", MountPoint: k.t.TempDir(),
		Options: map[string]string{"deviceId": "250:99", "sourceType": "empty", "targetType": "fileSystem", "encryptionType": "luks2"}})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "250:99") {
		k.t.Fatalf("SecureMount of a missing device: %v, want NotFound naming it", err)
	}
}

func (k *kataClient) getResource(uri string) ([]byte, error) {
	ctx, cancel := k.ctx()
	defer cancel()
	out, err := cdh.NewGetResourceServiceClient(k.conn).GetResource(ctx, &cdh.GetResourceRequest{ResourcePath: uri})
	return out.GetResource(), err
}

func sockets(t *testing.T) (dir, cdhSock, aaSock string) {
	// Unix socket paths are limited to 108 bytes: keep them short.
	dir, err := os.MkdirTemp("", "cdhp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir, filepath.Join(dir, "cdh.sock"), filepath.Join(dir, "aa", "aa.sock")
}

func TestKataAgentUnsealAndGetResource(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	fx := newSealedFixture(t, k)
	_, cdhSock, aaSock := sockets(t)
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cdh-socket", "unix://"+cdhSock, "--aa-socket", "unix://"+aaSock)
	if fi, err := os.Stat(cdhSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CDH socket %v mode %v, want 0600", err, fi)
	}
	kc := dialKata(t, cdhSock)
	kc.secureMountServed()

	// An env var value "sealed.…" and a mounted file "sealed.…", as kata-agent finds them.
	if got, err := kc.unseal(fx.envValue); err != nil || string(got) != "db-password-42" {
		t.Fatalf("unseal env: %q %v", got, err)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "tls.key")
	if err := os.WriteFile(f, []byte(fx.fileValue), 0o600); err != nil {
		t.Fatal(err)
	}
	content, _ := os.ReadFile(f)
	got, err := kc.unseal(string(content))
	if err != nil || string(got) != "-----tls key-----" {
		t.Fatalf("unseal file: %q %v", got, err)
	}
	if err := os.WriteFile(f+".unsealed", got, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := kc.getResource("kbs:///default/akv/coco_one"); err != nil || string(got) != "a secret" {
		t.Fatalf("GetResource: %q %v", got, err)
	}
	// HTTP and ttrpc share one token: everything above took one attestation.
	if r := p.get(cocoOne); r.Body != "a secret" {
		t.Fatalf("HTTP: %q", r.Body)
	}
	if c := k.Counts(); c.Handshakes != 1 {
		t.Fatalf("handshakes = %d, want 1 shared by HTTP and ttrpc", c.Handshakes)
	}

	// A malformed pull is refused at once (image_test.go pulls for real);
	// so is a SecureMount without a mount point.
	ctx, cancel := kc.ctx()
	defer cancel()
	_, err = cdh.NewImagePullServiceClient(kc.conn).PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: "x"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PullImage without a bundle: %v", err)
	}
	_, err = cdh.NewSecureMountServiceClient(kc.conn).SecureMount(ctx, &cdh.SecureMountRequest{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "mount_point") {
		t.Fatalf("SecureMount without a mount point: %v", err)
	}

	// AA on its socket.
	ac := aa.NewAttestationAgentServiceClient(dialKata(t, aaSock).conn)
	tee, err := ac.GetTeeType(ctx, &aa.GetTeeTypeRequest{})
	if err != nil || tee.GetTee() != "sample" {
		t.Fatalf("GetTeeType: %v %v", tee, err)
	}
	ev, err := ac.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: []byte("hi")})
	if err != nil || !strings.Contains(string(ev.GetEvidence()), base64.StdEncoding.EncodeToString([]byte("hi"))) {
		t.Fatalf("GetEvidence: %s %v", ev.GetEvidence(), err)
	}
	tok, err := ac.GetToken(ctx, &aa.GetTokenRequest{TokenType: "kbs"})
	if err != nil {
		t.Fatal(err)
	}
	var tj struct {
		Token      string `json:"token"`
		TeeKeypair string `json:"tee_keypair"`
	}
	if err := json.Unmarshal(tok.GetToken(), &tj); err != nil || strings.Count(tj.Token, ".") != 2 || !strings.Contains(tj.TeeKeypair, "BEGIN PRIVATE KEY") {
		t.Fatalf("GetToken: %v (token %d bytes)", err, len(tj.Token))
	}
	if _, err := ac.GetToken(ctx, &aa.GetTokenRequest{TokenType: "coco_as"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetToken(coco_as): %v", err)
	}
	m, err := ac.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "d"})
	if err != nil || m.GetResult() != aa.RuntimeMeasurementResult_NOT_ENABLED {
		t.Fatalf("ExtendRuntimeMeasurement: %v %v", m, err)
	}
	p.stop()
	if strings.Contains(p.logs.String(), "db-password-42") || strings.Contains(p.logs.String(), tj.Token) {
		t.Fatal("a secret or the token reached the logs")
	}
	if _, err := os.Stat(cdhSock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after SIGTERM: %v", err)
	}
}

func TestHostileSealedSecrets(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	fx := newSealedFixture(t, k)
	_, cdhSock, _ := sockets(t)
	startProxy(t, k, nil, "--kbs-url", k.URL, "--cdh-socket", "unix://"+cdhSock)
	kc := dialKata(t, cdhSock)
	parts := strings.Split(strings.TrimPrefix(fx.envValue, "sealed."), ".")
	enc := base64.RawURLEncoding.EncodeToString
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	badSig, _ := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/env-secret"), "kbs:///default/signing-key/sealed-secret", other)
	missingKid, _ := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/env-secret"), "kbs:///default/signing-key/nope", fx.key)
	traversalKid, _ := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/env-secret"), "../../etc/shadow", fx.key)
	missingSecret, _ := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/nope"), "kbs:///default/signing-key/sealed-secret", fx.key)
	envelope := "sealed." + parts[0] + "." + enc([]byte(`{"version":"0.1.0","type":"envelope","provider":"kbs","name":"x","provider_settings":{},"annotations":{}}`)) + "." + parts[2]
	tests := []struct {
		name, in string
		want     codes.Code
		msg      string
	}{
		{"bad base64", "sealed." + parts[0] + ".%%%." + parts[2], codes.InvalidArgument, "base64"},
		{"not sealed", "plain-value", codes.InvalidArgument, "sealed."},
		{"wrong type (envelope)", envelope, codes.Unimplemented, "envelope"},
		{"bad signature", badSig, codes.PermissionDenied, "signature does not match"},
		{"missing kid resource", missingKid, codes.NotFound, "signing key"},
		{"traversal kid", traversalKid, codes.PermissionDenied, "plain file name"},
		{"missing secret", missingSecret, codes.NotFound, "not found"},
		{"fake header", "sealed.fakejwsheader." + parts[1] + ".fakesignature", codes.PermissionDenied, "skip_sealed_secret_verification"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kc.unseal(tt.in)
			if status.Code(err) != tt.want || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v (%v), want %v mentioning %q", err, status.Code(err), tt.want, tt.msg)
			}
		})
	}
	for uri, want := range map[string]codes.Code{
		"kbs:///default/../x":                  codes.InvalidArgument,
		"kbs+plugin:///a/b/c":                  codes.NotFound, // the KBS has no plugin "plugin"
		"kbs+sample:///../x":                   codes.InvalidArgument,
		"https://kbs/default/a/b":              codes.InvalidArgument,
		"kbs:///default/akv/nope":              codes.NotFound,
		"kbs://ignored:1/default/akv/coco_one": codes.OK,
	} {
		if _, err := kc.getResource(uri); status.Code(err) != want {
			t.Errorf("GetResource(%q) = %v, want %v", uri, err, want)
		}
	}
	// Unsigned envelope with verification skipped: a clear "unsupported".
	_, skipSock, _ := sockets(t)
	startProxy(t, k, []string{"SKIP_SEALED_SECRET_VERIFICATION=true"}, "--kbs-url", k.URL, "--cdh-socket", "unix://"+skipSock)
	skc := dialKata(t, skipSock)
	if _, err := skc.unseal(envelope); status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "envelope") {
		t.Fatalf("envelope: %v", err)
	}
	if got, err := skc.unseal("sealed.fakejwsheader." + parts[1] + ".fakesignature"); err != nil || string(got) != "db-password-42" {
		t.Fatalf("legacy unsigned form with verification skipped: %q %v", got, err)
	}
}

// The three drop-in invocations, with the exact flags kata-agent passes.
func TestDropInInvocations(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	dir, cdhSock, aaSock := sockets(t)
	ca, _ := os.ReadFile(k.CAFile)
	for _, name := range []string{"confidential-data-hub", "attestation-agent", "api-server-rest"} {
		if err := os.Symlink(proxyBin, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	cdhToml := filepath.Join(dir, "cdh.toml")
	aaToml := filepath.Join(dir, "aa.toml")
	initdata := filepath.Join(dir, "initdata.toml")
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "from the drop-in\n"})))
	mustWrite(t, cdhToml, fmt.Sprintf("socket = %q\n[kbc]\nname = \"cc_kbc\"\nurl = %q\nkbs_cert = '''\n%s'''\n"+
		"[image]\nwork_dir = %q\n[[image.registry_config.registry]]\nlocation = %q\ninsecure = true\n",
		"unix://"+cdhSock, k.URL, ca, filepath.Join(t.TempDir(), "image-rs"), reg.Host))
	mustWrite(t, aaToml, fmt.Sprintf("[token_configs.kbs]\nurl = %q\ncert = '''\n%s'''\n", k.URL, ca))
	mustWrite(t, initdata, "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n")
	env := []string{"CDH_PROXY_LOG_FORMAT=json", "CDH_PROXY_CMDLINE=-"}

	start := time.Now()
	startDropIn(t, filepath.Join(dir, "attestation-agent"), env,
		"--attestation_sock", "unix://"+aaSock, "--initdata-toml", initdata, "-c", aaToml, "--cdh-proxy-attester", "sample")
	startDropIn(t, filepath.Join(dir, "confidential-data-hub"), append(env, "OCICRYPT_KEYPROVIDER_CONFIG=/etc/ocicrypt_config.json"),
		"-c", cdhToml, "--cdh-proxy-attester", "sample")
	waitSocket(t, aaSock, start)
	waitSocket(t, cdhSock, start)

	kc := dialKata(t, cdhSock)
	if got, err := kc.getResource("kbs:///default/akv/coco_one"); err != nil || string(got) != "a secret" {
		t.Fatalf("CDH drop-in: %q %v", got, err)
	}
	kc.secureMountServed()
	// Guest pull through the drop-in process.
	_, rootfs, err := kc.pullImage(reg.Host + "/app:v1")
	if err != nil {
		t.Fatalf("CDH drop-in PullImage: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(rootfs, "hello")); err != nil || string(got) != "from the drop-in\n" {
		t.Fatalf("drop-in rootfs: %q %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	tee, err := aa.NewAttestationAgentServiceClient(dialKata(t, aaSock).conn).GetTeeType(ctx, &aa.GetTeeTypeRequest{})
	if err != nil || tee.GetTee() != "sample" {
		t.Fatalf("AA drop-in: %v %v", tee, err)
	}
	// ASR forwards to both sockets.
	asr := startProxyProc(t, filepath.Join(dir, "api-server-rest"), env,
		"--features", "all", "-b", "127.0.0.1:0", "--cdh_addr", "unix://"+cdhSock, "--aa_addr", "unix://"+aaSock)
	if r := asr.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
		t.Fatalf("ASR → CDH: %d %s", r.Status, r.Body)
	}
	if r := asr.get("/cdh/resource/default/akv/nope"); r.Status != 404 {
		t.Fatalf("ASR missing resource: %d %s", r.Status, r.Body)
	}
	if r := asr.get("/cdh/plugin/credential/a?x=1"); r.Status != 200 || !strings.HasSuffix(r.Body, " for /a?x=1") {
		t.Fatalf("ASR → CDH plugin: %d %s", r.Status, r.Body)
	}
	if r := asr.get("/cdh/plugin/nope/a"); r.Status != 404 {
		t.Fatalf("ASR → CDH missing plugin: %d %s", r.Status, r.Body)
	}
	if r := asr.get("/aa/token?token_type=kbs"); r.Status != 200 || !strings.Contains(r.Body, `"tee_keypair"`) {
		t.Fatalf("ASR → AA token: %d", r.Status)
	}
	if r := asr.get("/aa/token"); r.Status != 400 {
		t.Fatalf("ASR /aa/token without token_type: %d", r.Status)
	}
	out, err := execProxyEnv(filepath.Join(dir, "api-server-rest"), nil, "--features", "everything")
	if err == nil || !strings.Contains(out, "unknown --features") {
		t.Fatalf("unknown features: %v %s", err, out)
	}
}

func mustWrite(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitSocket requires the socket to answer within 1 s of launch: kata-agent
// polls for 6 s and fails the sandbox without it.
func waitSocket(t *testing.T, path string, start time.Time) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, path+" to answer", func() bool {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%s answered after %v, want < 1 s", path, d)
	}
}

// [[credentials]] are fetched after the socket is bound, even when the KBS
// is slow at first, and written as files; /readyz waits for them.
func TestCredentialsFetchedAtStartup(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	dir, cdhSock, _ := sockets(t)
	credDir := filepath.Join(dir, "kbs")
	ca, _ := os.ReadFile(k.CAFile)
	cdhToml := filepath.Join(dir, "cdh.toml")
	mustWrite(t, cdhToml, fmt.Sprintf("socket = %q\n[kbc]\nname = \"cc_kbc\"\nurl = %q\nkbs_cert = '''\n%s'''\n[[credentials]]\nresource_uri = \"kbs:///default/akv/coco_one\"\npath = %q\n",
		"unix://"+cdhSock, k.URL, ca, credDir+"/one"))
	cmdline := filepath.Join(dir, "cmdline")
	mustWrite(t, cmdline, "quiet cdh.kbs_resources=kbs:///default/akv/coco_two::"+credDir+"/sub/two")
	k.SetFaults(kbs.Faults{Delay: 300 * time.Millisecond, Only: []kbs.Endpoint{kbs.EndpointResource}})
	start := time.Now()
	p := startProxyBin(t, proxyBin, nil, []string{"CDH_PROXY_CREDENTIALS_DIR=" + credDir}, "-c", cdhToml, "--attester", "sample", "--cmdline", cmdline)
	waitSocket(t, cdhSock, start)
	testutil.Eventually(t, 10*time.Second, "credentials", func() bool {
		a, _ := os.ReadFile(credDir + "/one")
		b, _ := os.ReadFile(credDir + "/sub/two")
		return string(a) == "a secret" && string(b) == "another secret"
	})
	if fi, _ := os.Stat(credDir + "/one"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential mode %v", fi.Mode())
	}
	testutil.Eventually(t, 5*time.Second, "readyz", func() bool { return p.get("/readyz").Status == 200 })
}
