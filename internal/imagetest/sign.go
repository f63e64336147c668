package imagetest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/containers/ocicrypt/blockcipher"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// GPGKey is an OpenPGP key for simple signing.
type GPGKey struct{ e *openpgp.Entity }

// NewGPGKey makes a key.
func NewGPGKey(t TB) *GPGKey {
	e, err := openpgp.NewEntity("cdh-proxy test", "", "test@cdh-proxy.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &GPGKey{e}
}

// PublicKeyring is the binary public keyring a policy's keyPath points at.
func (k *GPGKey) PublicKeyring(t TB) []byte {
	var b bytes.Buffer
	if err := k.e.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// SignLookaside writes a simple-signing signature of manifest d for
// identity (host/repo:tag) into a lookaside store directory as skopeo
// lays it out: <store>/<repo path>@sha256=<hex>/signature-1.
func (k *GPGKey) SignLookaside(t TB, store, repoPath, identity string, d v1.Hash) {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{
		"critical": map[string]any{
			"type":     "atomic container signature",
			"image":    map[string]string{"docker-manifest-digest": d.String()},
			"identity": map[string]string{"docker-reference": identity},
		},
		"optional": map[string]any{"creator": "cdh-proxy tests"},
	})
	var sig bytes.Buffer
	w, err := openpgp.Sign(&sig, k.e, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(store, repoPath+"@"+d.Algorithm+"="+d.Hex)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "signature-1"), sig.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// EncryptedLayer encrypts a gzip tar layer with ocicrypt's block cipher
// and wraps its options with kek for the CoCo key provider, as
// coco-keyprovider does: the packet names kid.
func EncryptedLayer(t TB, plain []byte, kid string, kek []byte) v1.Layer {
	t.Helper()
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		t.Fatal(err)
	}
	r, fin, err := h.Encrypt(bytes.NewReader(plain), blockcipher.AES256CTR)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := fin()
	if err != nil {
		t.Fatal(err)
	}
	opts.Private.Digest = digest.FromBytes(plain)
	priv, _ := json.Marshal(opts.Private)
	pub, _ := json.Marshal(opts.Public)
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	gcm, _ := cipher.NewGCM(block)
	iv := make([]byte, gcm.NonceSize())
	rand.Read(iv)
	packet, _ := json.Marshal(map[string]string{
		"kid":          kid,
		"wrapped_data": base64.StdEncoding.EncodeToString(gcm.Seal(nil, iv, priv, nil)),
		"iv":           base64.StdEncoding.EncodeToString(iv),
		"wrap_type":    "A256GCM",
	})
	// Its diff_id is the decrypted, uncompressed tar's, as ocicrypt keeps it.
	return &annotatedLayer{
		Layer: withDiffID(t, static.NewLayer(enc, types.MediaType("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")), uncompressedDigest(t, plain)),
		ann: map[string]string{
			"org.opencontainers.image.enc.keys.provider.attestation-agent": base64.StdEncoding.EncodeToString(packet),
			"org.opencontainers.image.enc.pubopts":                         base64.StdEncoding.EncodeToString(pub),
		},
	}
}

// annotatedLayer carries its descriptor annotations (mutate.Append reads
// them through Descriptor).
type annotatedLayer struct {
	v1.Layer
	ann map[string]string
}

func (l *annotatedLayer) Descriptor() (*v1.Descriptor, error) {
	d, err := l.Layer.Digest()
	if err != nil {
		return nil, err
	}
	sz, err := l.Layer.Size()
	if err != nil {
		return nil, err
	}
	mt, err := l.Layer.MediaType()
	if err != nil {
		return nil, err
	}
	return &v1.Descriptor{MediaType: mt, Size: sz, Digest: d, Annotations: l.ann}, nil
}
