package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/api/keyprovider"
	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// pullImage calls PullImage as kata-agent does: a fresh, empty bundle
// directory and agent.image_pull_timeout's 1200 s deadline.
func (k *kataClient) pullImage(image string) (digest, rootfs string, err error) {
	k.t.Helper()
	bundle := k.t.TempDir()
	k.t.Cleanup(func() { unix.Unmount(filepath.Join(bundle, "rootfs"), unix.MNT_DETACH) })
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Second)
	defer cancel()
	res, err := cdh.NewImagePullServiceClient(k.conn).PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: image, BundlePath: bundle})
	return res.GetManifestDigest(), filepath.Join(bundle, "rootfs"), err
}

// TestKataAgentPullsImage is guest pull end to end: a private registry
// whose credentials, signature policy, cosign key and image key all sit in
// the KBS, a signed image with an encrypted layer, configured by cdh.toml's
// [image] as guest-components reads it, pulled over the CDH socket.
func TestKataAgentPullsImage(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	reg := imagetest.NewRegistry(t, false)
	kek := make([]byte, 32)
	rand.Read(kek)
	cosign := imagetest.NewCosignKey(t)

	base := imagetest.Layer(t, imagetest.Entry{Name: "etc/", Type: '5'}, imagetest.Entry{Name: "etc/hostname", Body: "guest\n"})
	secret := imagetest.EncryptedLayer(t, imagetest.TarGz(t, imagetest.Entry{Name: "app/model.bin", Body: "confidential weights\n"}),
		"kbs:///default/image-key/app", kek)
	ref := reg.Host + "/team/app:v1"
	want := reg.Push(t, "team/app:v1", imagetest.Image(t, base, secret))
	reg.SignCosign(t, cosign, "team/app:v1", ref, want)
	reg.Push(t, "team/unsigned:v1", imagetest.Image(t, base))
	gpg := imagetest.NewGPGKey(t)
	lookaside := t.TempDir()
	gpgRef := reg.Host + "/gpg/app:v1"
	gd := reg.Push(t, "gpg/app:v1", imagetest.Image(t, base))
	gpg.SignLookaside(t, lookaside, "gpg/app", gpgRef, gd)
	missingKey := imagetest.EncryptedLayer(t, imagetest.TarGz(t, imagetest.Entry{Name: "x", Body: "x"}), "kbs:///default/image-key/absent", kek)
	reg.Push(t, "open/nokey:v1", imagetest.Image(t, base, missingKey))
	reg.RequireAuth("puller", "registry-password-7")

	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{
		"%[1]s/team": [{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/pub"}],
		"%[1]s/gpg": [{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/gpg-key/pub"}],
		"%[1]s/open": [{"type":"insecureAcceptAnything"}]}}}`, reg.Host)
	auth := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, base64.StdEncoding.EncodeToString([]byte("puller:registry-password-7")))
	for _, r := range []struct {
		typ, tag string
		data     []byte
	}{
		{"security-policy", "test", []byte(policy)},
		{"cosign-key", "pub", cosign.PublicPEM(t)},
		{"gpg-key", "pub", gpg.PublicKeyring(t)},
		{"sigstore-config", "test", []byte("default-docker:\n  sigstore: file://" + lookaside + "\n")},
		{"image-key", "app", kek},
		{"credential", "regcred", []byte(auth)},
	} {
		if err := k.Store.Write("default", r.typ, r.tag, r.data); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	cdhToml := filepath.Join(t.TempDir(), "cdh.toml")
	caPEM, _ := os.ReadFile(k.CAFile)
	os.WriteFile(cdhToml, fmt.Appendf(nil, `socket = "unix:///unused"
[kbc]
name = "cc_kbc"
url = %q
kbs_cert = '''%s'''

[image]
work_dir = %q
image_security_policy_uri = "kbs:///default/security-policy/test"
sigstore_config_uri = "kbs:///default/sigstore-config/test"
authenticated_registry_credentials_uri = "kbs:///default/credential/regcred"
max_concurrent_layer_downloads_per_image = 2

[[image.registry_config.registry]]
location = %q
insecure = true
`, k.URL, caPEM, work, reg.Host), 0o600)

	_, cdhSock, _ := sockets(t)
	p := startProxy(t, k, nil, "-c", cdhToml, "--cdh-socket", "unix://"+cdhSock)
	kc := dialKata(t, cdhSock)

	dg, rootfs, err := kc.pullImage(ref)
	if err != nil {
		t.Fatalf("PullImage: %v\n%s", err, p.logs)
	}
	if dg != want.String() {
		t.Errorf("manifest_digest %s, want %s", dg, want)
	}
	for file, body := range map[string]string{"etc/hostname": "guest\n", "app/model.bin": "confidential weights\n"} {
		if got, err := os.ReadFile(filepath.Join(rootfs, file)); err != nil || string(got) != body {
			t.Errorf("rootfs %s = %q, %v", file, got, err)
		}
	}
	var mounts []string
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, rootfs) {
				mounts = append(mounts, l)
			}
		}
	}
	if len(mounts) != 1 || !strings.Contains(mounts[0], " overlay ") {
		t.Errorf("rootfs mounts %v, want one overlay", mounts)
	}

	if _, _, err := kc.pullImage(gpgRef); err != nil {
		t.Errorf("GPG-signed image: %v", err)
	}
	if _, _, err := kc.pullImage(reg.Host + "/team/unsigned:v1"); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(status.Convert(err).Message(), "rejected by the image security policy") {
		t.Errorf("unsigned image: %v", err)
	}
	_, nokeyRoot, err := kc.pullImage(reg.Host + "/open/nokey:v1")
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), "kbs:///default/image-key/absent") {
		t.Errorf("missing image key: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(nokeyRoot, "etc")); serr == nil {
		t.Error("a pull that failed left a rootfs")
	}

	// The key provider answers ocicrypt's protocol with the same keys.
	desc, err := secret.(interface {
		Descriptor() (*v1.Descriptor, error)
	}).Descriptor()
	if err != nil {
		t.Fatal(err)
	}
	packet, _ := base64.StdEncoding.DecodeString(desc.Annotations["org.opencontainers.image.enc.keys.provider.attestation-agent"])
	in, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": packet}})
	ctx, cancel := kc.ctx()
	defer cancel()
	kp := keyprovider.NewKeyProviderServiceClient(kc.conn)
	out, err := kp.UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
	if err != nil {
		t.Fatalf("UnWrapKey: %v", err)
	}
	// Read as guest-components' Rust client reads it: optsdata is serde's
	// Vec<u8>, an array of numbers (a base64 string fails to decode here).
	var res struct {
		KeyUnwrapResults struct {
			OptsData []uint16 `json:"optsdata"`
		} `json:"keyunwrapresults"`
	}
	if err := json.Unmarshal(out.GetKeyProviderKeyWrapProtocolOutput(), &res); err != nil {
		t.Fatalf("UnWrapKey output: %v", err)
	}
	opts := make([]byte, len(res.KeyUnwrapResults.OptsData))
	for i, n := range res.KeyUnwrapResults.OptsData {
		opts[i] = byte(n)
	}
	if !strings.Contains(string(opts), `"symkey"`) {
		t.Fatalf("UnWrapKey optsdata %q", opts)
	}
	bad, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": []byte(`{"kid":"kbs:///default/image-key/app"}`)}})
	if _, err := kp.UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: bad}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("UnWrapKey without wrapped_data: %v", err)
	}

	if r := p.get("/metrics"); !strings.Contains(r.Body, `cdh_proxy_image_pull_seconds_count{result="ok"} 2`) ||
		!strings.Contains(r.Body, `cdh_proxy_image_pull_seconds_count{result="denied"} 1`) {
		t.Errorf("metrics lack the pulls:\n%s", grepLines(r.Body, "image_pull"))
	}
	p.stop()
	logs := p.logs.String()
	if !strings.Contains(logs, want.String()) {
		t.Error("the pulled digest is not logged")
	}
	for _, s := range []string{"registry-password-7", base64.StdEncoding.EncodeToString(kek), "confidential weights"} {
		if strings.Contains(logs, s) {
			t.Errorf("logs carry %q", s)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
