// Package imagetest builds OCI images and serves them from an in-process
// registry (go-containerregistry's pkg/registry) for the image-pull tests:
// layers with chosen tar entries, encrypted layers, GPG simple-signing and
// cosign signatures, basic auth, TLS and fault injection.
package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TB is the part of testing.TB the helpers use, so that the benchmark
// program (not a test) can build and serve images too.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// Entry is one tar entry of a test layer. Zero Mode means 0644 for files
// and 0755 for directories.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when zero
	Body     string
	Size     int64 // for TypeReg with no Body: that many zero bytes
	Link     string
	Mode     int64
	UID, GID int
	Major    int64
	Minor    int64
	Xattrs   map[string]string
}

// TarGz returns the gzip-compressed tar of entries.
func TarGz(t TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Linkname: e.Link, Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			Devmajor: e.Major, Devminor: e.Minor, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		var body io.Reader = strings.NewReader(e.Body)
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
			if e.Body == "" && e.Size > 0 {
				h.Size, body = e.Size, io.LimitReader(zeros{}, e.Size)
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// Layer is a gzip tar layer whose diff_id is the uncompressed tar's
// digest, as in every real image (puller and containerd check it).
func Layer(t TB, entries ...Entry) v1.Layer {
	t.Helper()
	gz := TarGz(t, entries...)
	return withDiffID(t, static.NewLayer(gz, types.OCILayer), uncompressedDigest(t, gz))
}

// uncompressedDigest is the digest of b's tar stream: b gunzipped, or b
// itself when it is not gzip.
func uncompressedDigest(t TB, b []byte) v1.Hash {
	t.Helper()
	plain := b
	if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
		if plain, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	h, _, err := v1.SHA256(bytes.NewReader(plain))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// diffIDLayer is a layer with its diff_id given.
type diffIDLayer struct {
	v1.Layer
	diffID v1.Hash
}

func withDiffID(t TB, l v1.Layer, d v1.Hash) v1.Layer {
	t.Helper()
	return &diffIDLayer{Layer: l, diffID: d}
}

func (l *diffIDLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }

// Image is an OCI image of layers (bottom first) for this machine's
// platform.
func Image(t TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	return ImageFor(t, runtime.GOARCH, layers...)
}

// ImageFor is Image for another architecture.
func ImageFor(t TB, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	// One Append for all: appending one at a time nests an image per
	// layer, and a 500-layer image then took a minute to push.
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l}
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		t.Fatal(err)
	}
	return img
}

// Registry is an in-process registry on 127.0.0.1.
type Registry struct {
	Server *httptest.Server
	Host   string // 127.0.0.1:port

	mu       sync.Mutex
	user     string
	pass     string
	blobGets map[string]int
	corrupt  map[string]bool
	pad      map[string]bool
	stall    map[string]chan struct{}
	down     bool

	// gate: blob downloads wait until gateWidth are in flight at once
	// (or all gateTotal have come), so the largest number in flight shows
	// a client's parallelism without depending on timing.
	configs               map[string]bool // config blobs pushed: never gated
	gateWidth, gateTotal  int
	gateArrived, inFlight int
	maxInFlight           int
	gateCond              *sync.Cond
}

// NewRegistry serves a registry over plain HTTP (tls false) or HTTPS
// with a certificate for 127.0.0.1 (see CAPEM).
func NewRegistry(t TB, useTLS bool) *Registry {
	t.Helper()
	r := &Registry{blobGets: map[string]int{}, corrupt: map[string]bool{}, pad: map[string]bool{}, stall: map[string]chan struct{}{}, configs: map[string]bool{}}
	r.gateCond = sync.NewCond(&r.mu)
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		user, pass, down := r.user, r.pass, r.down
		r.mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if user != "" && req.Header.Get("X-Test-Push") == "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if i := strings.Index(req.URL.Path, "/blobs/sha256:"); i >= 0 && req.Method == http.MethodGet {
			d := req.URL.Path[i+len("/blobs/"):]
			r.mu.Lock()
			r.blobGets[d]++
			bad := r.corrupt[d]
			padded := r.pad[d]
			stalled := r.stall[d]
			delete(r.stall, d)
			if r.gateWidth > 0 && !r.configs[d] { // layers only: a config is fetched alone first
				r.inFlight++
				r.gateArrived++
				r.maxInFlight = max(r.maxInFlight, r.inFlight)
				r.gateCond.Broadcast()
				stop := context.AfterFunc(req.Context(), func() {
					r.mu.Lock()
					r.gateCond.Broadcast()
					r.mu.Unlock()
				})
				defer stop()
				for r.inFlight < r.gateWidth && r.gateArrived < r.gateTotal && req.Context().Err() == nil {
					r.gateCond.Wait()
				}
				defer func() {
					r.mu.Lock()
					r.inFlight--
					r.mu.Unlock()
				}()
			}
			r.mu.Unlock()
			if stalled != nil {
				// Half the blob, then nothing until the client goes away.
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, req)
				b := rec.Body.Bytes()
				w.Header().Set("Content-Length", strconv.Itoa(len(b)))
				w.WriteHeader(rec.Code)
				w.Write(b[:len(b)/2])
				w.(http.Flusher).Flush()
				close(stalled)
				<-req.Context().Done()
				return
			}
			if padded {
				// The blob, then a megabyte more than its size.
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, req)
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
				w.Write(make([]byte, 1<<20))
				return
			}
			if bad {
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, req)
				b := rec.Body.Bytes()
				if len(b) > 0 {
					b[len(b)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
		}
		inner.ServeHTTP(w, req)
	})
	if useTLS {
		r.Server = httptest.NewTLSServer(h)
	} else {
		r.Server = httptest.NewServer(h)
	}
	t.Cleanup(r.Server.Close)
	r.Host = strings.TrimPrefix(strings.TrimPrefix(r.Server.URL, "http://"), "https://")
	return r
}

// CAPEM is the PEM of the TLS registry's certificate (its own root).
func (r *Registry) CAPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Server.Certificate().Raw}))
}

// RequireAuth makes every request but the tests' pushes need basic auth.
func (r *Registry) RequireAuth(user, pass string) {
	r.mu.Lock()
	r.user, r.pass = user, pass
	r.mu.Unlock()
}

// SetDown makes the registry answer 503 to everything.
func (r *Registry) SetDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// Corrupt flips a byte in the body of blob d when it is served.
func (r *Registry) Corrupt(d v1.Hash) {
	r.mu.Lock()
	r.corrupt[d.String()] = true
	r.mu.Unlock()
}

// Pad makes blob d come with a megabyte of junk after it.
func (r *Registry) Pad(d v1.Hash) {
	r.mu.Lock()
	r.pad[d.String()] = true
	r.mu.Unlock()
}

// Stall makes the next download of blob d send half the blob and then
// hang until the client gives up; the channel closes when it hangs.
func (r *Registry) Stall(d v1.Hash) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	r.stall[d.String()] = ch
	return ch
}

// Gate holds each blob download until width downloads are in flight
// together, or total have arrived; MaxInFlight then tells how many a
// client ran at once. A client that runs fewer than width at once (and
// fewer than total in all) hangs on the gate: give the test a deadline.
func (r *Registry) Gate(width, total int) {
	r.mu.Lock()
	r.gateWidth, r.gateTotal = width, total
	r.mu.Unlock()
}

// MaxInFlight is the largest number of gated blob downloads at once.
func (r *Registry) MaxInFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxInFlight
}

// BlobGets is how often blob d was downloaded.
func (r *Registry) BlobGets(d v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGets[d.String()]
}

type pushTransport struct{ base http.RoundTripper }

func (p pushTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("X-Test-Push", "1")
	return p.base.RoundTrip(req)
}

func (r *Registry) remoteOpts() []remote.Option {
	return []remote.Option{remote.WithTransport(pushTransport{r.Server.Client().Transport})}
}

// Push stores img as <host>/<repo> (repo carries the tag) and returns the
// manifest digest.
func (r *Registry) Push(t TB, repo string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, r.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	r.noteConfig(t, img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (r *Registry) noteConfig(t TB, img v1.Image) {
	t.Helper()
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.configs[c.String()] = true
	r.mu.Unlock()
}

// PushIndex stores an index of imgs as <host>/<repo>.
func (r *Registry) PushIndex(t TB, repo string, imgs map[string]v1.Image) v1.Hash {
	t.Helper()
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for arch, img := range imgs {
		r.noteConfig(t, img)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	ref, err := name.ParseReference(r.Host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, r.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// CosignKey is an ECDSA P-256 key as cosign generates them.
type CosignKey struct{ priv *ecdsa.PrivateKey }

// NewCosignKey makes a key.
func NewCosignKey(t TB) *CosignKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &CosignKey{k}
}

// PublicPEM is the key's public half as cosign.pub holds it.
func (k *CosignKey) PublicPEM(t TB) []byte {
	der, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// SignCosign stores a cosign signature of manifest d for identity
// (host/repo:tag) where cosign puts it: the tag sha256-<hex>.sig.
func (r *Registry) SignCosign(t TB, k *CosignKey, repo string, identity string, d v1.Hash) {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": identity},
			"image":    map[string]string{"docker-manifest-digest": d.String()},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	})
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, k.priv, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json"),
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	repoOnly, _, _ := strings.Cut(repo, ":")
	r.Push(t, fmt.Sprintf("%s:%s-%s.sig", repoOnly, d.Algorithm, d.Hex), img)
}
