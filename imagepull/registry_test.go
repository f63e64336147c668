package imagepull

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
)

func pullOK(t *testing.T, p *Puller, ref string) string {
	t.Helper()
	b := bundle(t)
	if _, err := p.Pull(t.Context(), ref, b); err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return filepath.Join(b, "rootfs")
}

func TestSignaturePolicies(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "signed\n"}))
	gpgRef, cosignRef, plainRef := reg.Host+"/gpg/app:v1", reg.Host+"/cosign/app:v1", reg.Host+"/plain/app:v1"
	d := reg.Push(t, "gpg/app:v1", img)
	reg.Push(t, "cosign/app:v1", img)
	reg.Push(t, "plain/app:v1", img)

	gpg, otherGPG := imagetest.NewGPGKey(t), imagetest.NewGPGKey(t)
	store := t.TempDir()
	gpg.SignLookaside(t, store, "gpg/app", gpgRef, d)
	cosign, otherCosign := imagetest.NewCosignKey(t), imagetest.NewCosignKey(t)
	reg.SignCosign(t, cosign, "cosign/app:v1", cosignRef, d)

	policy := fmt.Sprintf(`{
	  "default": [{"type": "reject"}],
	  "transports": {"docker": {
	    "%[1]s/gpg":    [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/keys/gpg"}],
	    "%[1]s/cosign": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/keys/cosign"}],
	    "%[1]s/repo-signed": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/keys/cosign-repo"}],
	    "%[1]s/open":   [{"type": "insecureAcceptAnything"}]
	  }}}`, reg.Host)
	kbs := newFakeKBS(map[string][]byte{
		"kbs:///default/security-policy/test": []byte(policy),
		"kbs:///default/keys/gpg":             gpg.PublicKeyring(t),
		"kbs:///default/keys/cosign":          cosign.PublicPEM(t),
		"kbs:///default/keys/cosign-repo":     cosign.PublicPEM(t),
		"kbs:///default/sigstore-config/test": []byte("default-docker:\n  sigstore: file://" + store + "\n"),
	})
	cfg := forRegistry(t, reg)
	cfg.PolicyURI = "kbs:///default/security-policy/test"
	cfg.SigstoreConfigURI = "kbs:///default/sigstore-config/test"
	p := puller(t, cfg, kbs)

	if got := readFile(t, filepath.Join(pullOK(t, p, gpgRef), "hello")); got != "signed\n" {
		t.Errorf("gpg-signed rootfs: %q", got)
	}
	pullOK(t, p, cosignRef)

	denied := func(ref, why string) {
		t.Helper()
		b := bundle(t)
		_, err := p.Pull(t.Context(), ref, b)
		if codeOf(err) != CodeDenied || !strings.Contains(err.Error(), "rejected by the image security policy") {
			t.Errorf("%s (%s): %v, want a policy rejection", ref, why, err)
		}
		ents, _ := os.ReadDir(b)
		if len(ents) != 0 {
			t.Errorf("%s (%s): rejected image left %v in the bundle", ref, why, ents)
		}
	}
	denied(plainRef, "default reject")

	// cosign itself signs the repository, not the tag: such a signature
	// needs signedIdentity matchRepository, as containers-policy.json(5)
	// and image-rs's cosign docs say.
	reg.Push(t, "repo-signed/app:v1", img)
	reg.SignCosign(t, cosign, "repo-signed/app:v1", reg.Host+"/repo-signed/app", d)
	denied(reg.Host+"/repo-signed/app:v1", "repository identity under the default matchRepoDigestOrExact")
	denied(reg.Host+"/repo-signed/app@"+d.String(), "repository identity, even by digest")
	kbs.mu.Lock()
	kbs.res["kbs:///default/security-policy/test"] = []byte(strings.Replace(policy, `"keyPath": "kbs:///default/keys/cosign-repo"}`,
		`"keyPath": "kbs:///default/keys/cosign-repo", "signedIdentity": {"type": "matchRepository"}}`, 1))
	kbs.mu.Unlock()
	pullOK(t, p, reg.Host+"/repo-signed/app:v1")
	// The same image under a signed scope but without a signature.
	reg.Push(t, "gpg/app:unsigned", img)
	denied(reg.Host+"/gpg/app:unsigned", "no signature for this tag's identity")

	// Keys rotated at the KBS: the old signatures no longer verify.
	kbs.mu.Lock()
	kbs.res["kbs:///default/keys/gpg"] = otherGPG.PublicKeyring(t)
	kbs.res["kbs:///default/keys/cosign"] = otherCosign.PublicPEM(t)
	kbs.mu.Unlock()
	denied(gpgRef, "wrong GPG key")
	denied(cosignRef, "wrong cosign key")

	// A policy key missing at the KBS names the key.
	kbs.mu.Lock()
	delete(kbs.res, "kbs:///default/keys/gpg")
	kbs.mu.Unlock()
	_, err := p.Pull(t.Context(), gpgRef, bundle(t))
	if codeOf(err) != CodeFromFetch || !strings.Contains(err.Error(), "kbs:///default/keys/gpg") {
		t.Errorf("missing policy key: %v", err)
	}
}

func TestNoPolicyAcceptsAnything(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "x"})))
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	pullOK(t, p, reg.Host+"/app:v1")

	// An inline policy is read when no URI is given.
	cfg.Policy = `{"default":[{"type":"reject"}]}`
	p2 := puller(t, cfg, newFakeKBS(nil))
	if _, err := p2.Pull(t.Context(), reg.Host+"/app:v1", bundle(t)); codeOf(err) != CodeDenied {
		t.Errorf("inline reject policy: %v", err)
	}
}

func TestEncryptedImage(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	kek := make([]byte, 32)
	rand.Read(kek)
	plain := imagetest.TarGz(t, imagetest.Entry{Name: "secret.txt", Body: "decrypted\n"})
	base := imagetest.Layer(t, imagetest.Entry{Name: "base", Body: "clear\n"})
	reg.Push(t, "enc:v1", imagetest.Image(t, base, imagetest.EncryptedLayer(t, plain, "kbs:///default/image-key/1", kek)))

	cfg := forRegistry(t, reg)
	kbs := newFakeKBS(map[string][]byte{"kbs:///default/image-key/1": kek})
	p := puller(t, cfg, kbs)
	rootfs := pullOK(t, p, reg.Host+"/enc:v1")
	if got := readFile(t, filepath.Join(rootfs, "secret.txt")); got != "decrypted\n" {
		t.Errorf("secret.txt = %q", got)
	}

	// Wrong key: denied, named, nothing mounted, the layer not kept.
	wrong := make([]byte, 32)
	rand.Read(wrong)
	reg2 := imagetest.NewRegistry(t, false)
	reg2.Push(t, "enc:v1", imagetest.Image(t, base, imagetest.EncryptedLayer(t, plain, "kbs:///default/image-key/2", kek)))
	cfg2 := forRegistry(t, reg2)
	kbs2 := newFakeKBS(map[string][]byte{"kbs:///default/image-key/2": wrong})
	p2 := puller(t, cfg2, kbs2)
	b := bundle(t)
	_, err := p2.Pull(t.Context(), reg2.Host+"/enc:v1", b)
	if codeOf(err) != CodeDenied || !strings.Contains(err.Error(), "kbs:///default/image-key/2") {
		t.Errorf("wrong key: %v", err)
	}
	mustNotExist(t, filepath.Join(b, "rootfs"))
	if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(wrong)) {
		t.Error("the key reached the error")
	}
	// Missing key: the KBS's error, naming the kid.
	delete(kbs2.res, "kbs:///default/image-key/2")
	_, err = p2.Pull(t.Context(), reg2.Host+"/enc:v1", bundle(t))
	if codeOf(err) != CodeFromFetch || !strings.Contains(err.Error(), "kbs:///default/image-key/2") {
		t.Errorf("missing key: %v", err)
	}
	// The encrypted layer is never kept. The clear one may be or not: the
	// failure cancels its download, which may or may not have finished.
	p2.layers.close() // waits for the cancelled downloads to end
	baseDigest, _ := base.Digest()
	ents, _ := os.ReadDir(filepath.Join(cfg2.WorkDir, "layers"))
	for _, e := range ents {
		if filepath.Join(cfg2.WorkDir, "layers", e.Name()) != p2.layers.path(digest.Digest(baseDigest.String())) {
			t.Errorf("work_dir/layers holds %s, want at most the clear layer", e.Name())
		}
	}
}

func TestUnwrapKeyProtocol(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	layer := imagetest.EncryptedLayer(t, []byte("payload"), "kbs:///default/k/1", kek)
	desc, err := layer.(interface {
		Descriptor() (*v1.Descriptor, error)
	}).Descriptor()
	if err != nil {
		t.Fatal(err)
	}
	packet, err := base64.StdEncoding.DecodeString(desc.Annotations[AnnotationID])
	if err != nil {
		t.Fatal(err)
	}
	in, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": packet}})
	kbs := newFakeKBS(map[string][]byte{"kbs:///default/k/1": kek})
	out, err := UnwrapKey(t.Context(), kbs, in)
	if err != nil {
		t.Fatal(err)
	}
	optsData := decodeAsRust(t, out)
	var opts struct {
		SymKey []byte `json:"symkey"`
	}
	if err := json.Unmarshal(optsData, &opts); err != nil || len(opts.SymKey) != 32 {
		t.Fatalf("optsdata %q: %v", optsData, err)
	}
	// The annotation as an array of bytes (serde's Vec<u8>) is taken too.
	nums := make([]int, len(packet))
	for i, c := range packet {
		nums[i] = int(c)
	}
	inArray, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": nums}})
	if out, err := UnwrapKey(t.Context(), kbs, inArray); err != nil || !bytes.Equal(decodeAsRust(t, out), optsData) {
		t.Fatalf("annotation as a byte array: %v", err)
	}
	// A v2 packet: the same with version, provider and its settings.
	var v2 map[string]any
	json.Unmarshal(packet, &v2)
	v2["version"], v2["provider"], v2["provider_settings"], v2["annotations"] = "0.1.0", "kbs", map[string]any{}, map[string]any{}
	p2, _ := json.Marshal(v2)
	in2, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": p2}})
	if _, err := UnwrapKey(t.Context(), kbs, in2); err != nil {
		t.Errorf("v2 packet: %v", err)
	}
	v2["provider"] = "aliyun"
	p3, _ := json.Marshal(v2)
	in3, _ := json.Marshal(map[string]any{"op": "keyunwrap", "keyunwrapparams": map[string]any{"annotation": p3}})
	if _, err := UnwrapKey(t.Context(), kbs, in3); codeOf(err) != CodeUnsupported || !strings.Contains(err.Error(), "aliyun") {
		t.Errorf("KMS provider: %v, want unsupported naming it", err)
	}
	for name, input := range map[string]string{
		"not JSON":       "{",
		"wrong op":       `{"op":"keywrap"}`,
		"no annotation":  `{"op":"keyunwrap","keyunwrapparams":{}}`,
		"byte over 255":  `{"op":"keyunwrap","keyunwrapparams":{"annotation":[123,256]}}`,
		"negative byte":  `{"op":"keyunwrap","keyunwrapparams":{"annotation":[-1]}}`,
		"annotation obj": `{"op":"keyunwrap","keyunwrapparams":{"annotation":{}}}`,
		"bad packet":     `{"op":"keyunwrap","keyunwrapparams":{"annotation":"` + base64.StdEncoding.EncodeToString([]byte(`{"kid":"http://x"}`)) + `"}}`,
	} {
		if _, err := UnwrapKey(t.Context(), kbs, []byte(input)); codeOf(err) != CodeInvalid {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
}

func TestPrivateRegistryCredentialsFromKBS(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "private:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "private\n"})))
	reg.RequireAuth("alice", "s3cret-pass")
	auth := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pass")))

	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	_, err := p.Pull(t.Context(), reg.Host+"/private:v1", bundle(t))
	if codeOf(err) != CodeDenied {
		t.Fatalf("without credentials: %v, want denied", err)
	}

	cfg.AuthURI = "kbs:///default/credential/regcred"
	p2 := puller(t, cfg, newFakeKBS(map[string][]byte{cfg.AuthURI: []byte(auth)}))
	if got := readFile(t, filepath.Join(pullOK(t, p2, reg.Host+"/private:v1"), "f")); got != "private\n" {
		t.Errorf("f = %q", got)
	}

	// The same from a file:// URI; a wrong password is denied and never echoed.
	bad := filepath.Join(t.TempDir(), "auth.json")
	os.WriteFile(bad, []byte(strings.ReplaceAll(auth, base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pass")), base64.StdEncoding.EncodeToString([]byte("alice:wrong-pass")))), 0o600)
	cfg.AuthURI = "file://" + bad
	p3 := puller(t, cfg, newFakeKBS(nil))
	_, err = p3.Pull(t.Context(), reg.Host+"/private:v1", bundle(t))
	if codeOf(err) != CodeDenied || strings.Contains(err.Error(), "wrong-pass") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("wrong password: %v", err)
	}
}

func TestRegistryRules(t *testing.T) {
	primary := imagetest.NewRegistry(t, false)
	mirror := imagetest.NewRegistry(t, false)
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "from the mirror\n"}))
	mirror.Push(t, "team/app:v1", img)
	primary.SetDown(true)
	remap := imagetest.NewRegistry(t, false)
	remap.Push(t, "internal/app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "remapped\n"})))
	search := imagetest.NewRegistry(t, false)
	search.Push(t, "library/busybox:latest", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "short name\n"})))

	cfg := testConfig(t)
	cfg.Registries = fmt.Appendf(nil, `unqualified-search-registries = [%[1]q, %[2]q]

[[registry]]
location = %[1]q
insecure = true
[[registry.mirror]]
location = "127.0.0.1:1"
insecure = true
[[registry.mirror]]
location = %[3]q
insecure = true

[[registry]]
prefix = "example.test/apps"
location = "%[4]s/internal"
insecure = true

[[registry]]
location = %[2]q
insecure = true

[[registry]]
location = "blocked.test"
blocked = true
`, primary.Host, search.Host, mirror.Host, remap.Host)
	p := puller(t, cfg, newFakeKBS(nil))
	if got := readFile(t, filepath.Join(pullOK(t, p, primary.Host+"/team/app:v1"), "f")); got != "from the mirror\n" {
		t.Errorf("mirror: %q", got)
	}
	if got := readFile(t, filepath.Join(pullOK(t, p, "example.test/apps/app:v1"), "f")); got != "remapped\n" {
		t.Errorf("prefix remap: %q", got)
	}
	if got := readFile(t, filepath.Join(pullOK(t, p, "library/busybox"), "f")); got != "short name\n" {
		t.Errorf("short name: %q", got)
	}
	_, err := p.Pull(t.Context(), "blocked.test/app:v1", bundle(t))
	if codeOf(err) != CodeDenied || !strings.Contains(err.Error(), "blocked") {
		t.Errorf("blocked: %v", err)
	}
	_, err = p.Pull(t.Context(), search.Host+"/nope:v1", bundle(t))
	if codeOf(err) != CodeNotFound {
		t.Errorf("missing image: %v (code %d), want not found", err, codeOf(err))
	}
	_, err = p.Pull(t.Context(), "UPPER/Case:bad", bundle(t))
	if codeOf(err) != CodeInvalid {
		t.Errorf("bad reference: %v", err)
	}
}

func TestRegistryConfigFromURI(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "x"})))
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.Host)
	cfg := testConfig(t)
	cfg.RegistriesURI = "kbs:///default/registry-configuration/test"
	p := puller(t, cfg, newFakeKBS(map[string][]byte{cfg.RegistriesURI: []byte(conf)}))
	pullOK(t, p, reg.Host+"/app:v1")
}

func TestTLSRegistryWithExtraRoot(t *testing.T) {
	reg := imagetest.NewRegistry(t, true)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "tls\n"})))
	cfg := testConfig(t)
	p := puller(t, cfg, newFakeKBS(nil))
	if _, err := p.Pull(t.Context(), reg.Host+"/app:v1", bundle(t)); err == nil || codeOf(err) != CodeUnavailable {
		t.Fatalf("untrusted certificate: %v, want unavailable", err)
	}
	cfg.ExtraRootCertificates = []string{reg.CAPEM()}
	p2 := puller(t, cfg, newFakeKBS(nil))
	if got := readFile(t, filepath.Join(pullOK(t, p2, reg.Host+"/app:v1"), "f")); got != "tls\n" {
		t.Errorf("f = %q", got)
	}
}

func TestPullProxy(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	reg.Push(t, "app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "proxied\n"})))
	// registry.test resolves nowhere: only the proxy knows it, so a pull
	// that works went through the proxy.
	var via atomic.Int64
	target, _ := url.Parse("http://" + reg.Host)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Hostname() != "registry.test" {
			http.Error(w, "unknown host", http.StatusBadGateway)
			return
		}
		via.Add(1)
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, target.String()+r.URL.RequestURI(), r.Body)
		out.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer proxy.Close()
	_, port, _ := net.SplitHostPort(reg.Host)
	host := "registry.test:" + port
	cfg := testConfig(t)
	cfg.Registries = insecure(host)
	cfg.HTTPProxy, cfg.HTTPSProxy, cfg.NoProxy = proxy.URL, proxy.URL, "other.test"
	p := puller(t, cfg, newFakeKBS(nil))
	if got := readFile(t, filepath.Join(pullOK(t, p, host+"/app:v1"), "f")); got != "proxied\n" {
		t.Errorf("f = %q", got)
	}
	if via.Load() == 0 {
		t.Error("nothing went through the proxy")
	}
}

func TestMultiArchIndex(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	mine := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "arch", Body: "mine\n"}))
	index := reg.PushIndex(t, "multi:v1", map[string]v1.Image{
		runtime.GOARCH: mine,
		other:          imagetest.ImageFor(t, other, imagetest.Layer(t, imagetest.Entry{Name: "arch", Body: "other\n"})),
	})
	d, err := mine.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	b := bundle(t)
	got, err := p.Pull(t.Context(), reg.Host+"/multi:v1", b)
	if err != nil {
		t.Fatal(err)
	}
	// image-rs answers (and measures) the platform manifest's digest,
	// which is what KBS policies on the measured pull match.
	if got != d.String() {
		t.Errorf("digest %s, want this platform's manifest %s (the index is %s)", got, d, index)
	}
	if s := readFile(t, filepath.Join(b, "rootfs/arch")); s != "mine\n" {
		t.Errorf("arch = %q, want this platform's image", s)
	}
}

func TestConcurrentPullsShareDownloads(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	img := imagetest.Image(t,
		imagetest.Layer(t, imagetest.Entry{Name: "a", Body: strings.Repeat("a", 1<<20)}),
		imagetest.Layer(t, imagetest.Entry{Name: "b", Body: strings.Repeat("b", 1<<20)}))
	reg.Push(t, "app:v1", img)
	cfg := forRegistry(t, reg)
	p := puller(t, cfg, newFakeKBS(nil))
	const n = 8
	errs := make(chan error, n)
	for range n {
		b := bundle(t)
		go func() {
			_, err := p.Pull(t.Context(), reg.Host+"/app:v1", b)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ls, _ := img.Layers()
	for _, l := range ls {
		d, _ := l.Digest()
		if got := reg.BlobGets(d); got != 1 {
			t.Errorf("layer %s downloaded %d times by %d concurrent pulls, want once", d, got, n)
		}
	}
}

// A pull runs max_concurrent_layer_downloads_per_image layer downloads at
// once: the registry holds each download until that many are in flight, so
// a pull with less parallelism hangs to the deadline and fails. (More than
// the limit would show in MaxInFlight only if it arrived while the gate
// held the others, which is a race: the bound itself is errgroup's
// SetLimit in ensureAll.)
func TestLayerDownloadParallelism(t *testing.T) {
	for _, width := range []int{1, 3} {
		t.Run(fmt.Sprint(width), func(t *testing.T) {
			reg := imagetest.NewRegistry(t, false)
			var layers []v1.Layer
			for i := range 6 {
				layers = append(layers, imagetest.Layer(t, imagetest.Entry{Name: fmt.Sprint(i), Body: fmt.Sprint("layer ", i)}))
			}
			reg.Push(t, "app:v1", imagetest.Image(t, layers...))
			reg.Gate(width, 6)
			cfg := forRegistry(t, reg)
			cfg.MaxConcurrentLayerDownloads = width
			p := puller(t, cfg, newFakeKBS(nil))
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if _, err := p.Pull(ctx, reg.Host+"/app:v1", bundle(t)); err != nil {
				t.Fatal(err)
			}
			if got := reg.MaxInFlight(); got != width {
				t.Errorf("%d layer downloads at once, want %d", got, width)
			}
		})
	}
}

// blockingKBS never answers until the caller gives up.
type blockingKBS struct{}

func (blockingKBS) Fetch(ctx context.Context, uri string) ([]byte, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("%s: %w", uri, ctx.Err())
}

// A KBS that does not answer fails the pull within the fetch budget, not
// at kata's 1200 s deadline.
func TestKBSFetchBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{WorkDir: t.TempDir(), PolicyURI: "kbs:///default/security-policy/test"}
		p := New(cfg, blockingKBS{}, Options{FetchBudget: 30 * time.Second, Mount: func(string, string, string, uintptr, string) error { return syscall.ENODEV }})
		defer p.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 1200*time.Second)
		defer cancel()
		start := time.Now()
		_, err := p.Pull(ctx, "r.test/app:v1", t.TempDir())
		if codeOf(err) != CodeFromFetch || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), cfg.PolicyURI) {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d != 30*time.Second {
			t.Errorf("failed after %v, want the 30 s budget", d)
		}
	})
}

// A pull that looked for a layer just before another pull finished
// storing it must not download it again.
func TestLayerFinishedBetweenLookAndLock(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	layer := imagetest.Layer(t, imagetest.Entry{Name: "f", Body: "once"})
	reg.Push(t, "app:v1", imagetest.Image(t, layer))
	p := puller(t, forRegistry(t, reg), newFakeKBS(nil))
	inside, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	p.layers.hooks.afterStat = func() {
		if calls.Add(1) == 1 { // the first puller stops between look and lock
			close(inside)
			<-release
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := p.Pull(t.Context(), reg.Host+"/app:v1", bundle(t))
		errc <- err
	}()
	<-inside
	pullOK(t, p, reg.Host+"/app:v1") // the second stores the layer meanwhile
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	d, _ := layer.Digest()
	if n := reg.BlobGets(d); n != 1 {
		t.Errorf("layer downloaded %d times, want once", n)
	}
}

// A pull that comes while an abandoned download (its only puller gave up)
// is still winding down waits for it and downloads anew, instead of
// inheriting its cancellation.
func TestPullAfterAnAbandonedDownload(t *testing.T) {
	reg := imagetest.NewRegistry(t, false)
	layer := imagetest.Layer(t, imagetest.Entry{Name: "f", Body: strings.Repeat("a", 1<<16)})
	reg.Push(t, "app:v1", imagetest.Image(t, layer))
	d, _ := layer.Digest()
	hung := reg.Stall(d)
	p := puller(t, forRegistry(t, reg), newFakeKBS(nil))

	ending, release := make(chan struct{}), make(chan struct{})
	var ends atomic.Int32
	p.layers.hooks.beforeDone = func() {
		if ends.Add(1) == 1 { // hold the abandoned download in inflight
			close(ending)
			<-release
		}
	}
	waiting := make(chan struct{}, 4)
	p.layers.hooks.waiting = func() { waiting <- struct{}{} }

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := p.Pull(ctx, reg.Host+"/app:v1", bundle(t))
		errc <- err
	}()
	<-waiting // the first pull waits on its download…
	<-hung    // …which is under way
	cancel()
	if err := <-errc; codeOf(err) != CodeDeadline {
		t.Fatalf("first pull: %v", err)
	}
	<-ending // the abandoned download is still listed

	second := make(chan error, 1)
	go func() {
		_, err := p.Pull(t.Context(), reg.Host+"/app:v1", bundle(t))
		second <- err
	}()
	<-waiting // the second pull found it
	close(release)
	if err := <-second; err != nil {
		t.Fatalf("second pull inherited the abandoned download's end: %v", err)
	}
	if n := reg.BlobGets(d); n != 2 {
		t.Errorf("blob fetched %d times, want 2 (the abandoned one and the new one)", n)
	}
}

// decodeAsRust reads UnWrapKey's output as guest-components' Rust types
// do (serde: KeyUnwrapResults { optsdata: Vec<u8> }): optsdata must be an
// array of numbers 0–255; a base64 string is an error there.
func decodeAsRust(t *testing.T, out []byte) []byte {
	t.Helper()
	var res struct {
		KeyUnwrapResults struct {
			OptsData []uint16 `json:"optsdata"` // not []byte: Go would take base64 too
		} `json:"keyunwrapresults"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("output %.80s…: not what a Rust client reads: %v", out, err)
	}
	b := make([]byte, len(res.KeyUnwrapResults.OptsData))
	for i, n := range res.KeyUnwrapResults.OptsData {
		if n > 255 {
			t.Fatalf("optsdata[%d] = %d: not a byte", i, n)
		}
		b[i] = byte(n)
	}
	return b
}
