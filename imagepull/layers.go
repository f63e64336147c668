package imagepull

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"
	"golang.org/x/sync/errgroup"
)

// fetchLayer streams one image's layers: digest-checked, decrypted when
// encrypted, decompressed.
type fetchLayer struct {
	src   *sharedSource
	fetch Fetcher
	image string
}

// layer is one layer of the image being pulled: the manifest's
// descriptor and the config's diff_id for it, the digest of its
// uncompressed (and decrypted) tar stream.
type layer struct {
	types.BlobInfo
	DiffID digest.Digest
}

// apply streams layer info into root with archive.Apply and checks every
// digest before it returns nil: the blob's, an encrypted layer's
// plaintext's, and the config's diff_id, as image-rs and containerd do. What it wrote is only trustworthy when it
// returns nil: callers unpack into a scratch place first.
func (f *fetchLayer) apply(ctx context.Context, info layer, root string, overlay bool, counted *atomic.Int64) error {
	what := fmt.Sprintf("%s layer %s", f.image, info.Digest)
	if err := info.Digest.Validate(); err != nil {
		return &Error{Code: CodeInvalid, Msg: what + ": bad digest", Err: err}
	}
	blob, _, err := f.src.GetBlob(ctx, info.BlobInfo, none.NoCache)
	if err != nil {
		return registryError(ctx, what, err)
	}
	defer blob.Close()
	outer := info.Digest.Verifier()
	var body io.Reader = blob
	if info.Size >= 0 {
		// The manifest names the size (and the manifest is what the
		// policy approved): a registry that sends more is not read on.
		body = io.LimitReader(blob, info.Size)
	}
	raw := io.TeeReader(&countReader{r: body, n: counted}, outer)
	r := raw

	var inner digest.Verifier
	if strings.HasSuffix(info.MediaType, "+encrypted") {
		plain, want, err := decryptLayer(ctx, f.fetch, info.Annotations, r)
		if err != nil {
			return classify(what, err)
		}
		r = plain
		if want != "" {
			if want.Validate() != nil {
				return &Error{Code: CodeInvalid, Msg: what + ": the encrypted layer names a bad plaintext digest"}
			}
			inner = want.Verifier()
			r = io.TeeReader(r, inner)
		}
	}
	if info.DiffID.Validate() != nil {
		return &Error{Code: CodeInvalid, Msg: what + ": the image config names a bad diff_id"}
	}
	decompressed, err := decompress(r)
	if err != nil {
		return &Error{Code: CodeInvalid, Msg: what + ": decompress", Err: err}
	}
	defer decompressed.Close()
	diff := info.DiffID.Algorithm().Digester()
	tarStream := io.TeeReader(decompressed, diff.Hash())
	opts := []archive.ApplyOpt{archive.WithFilter(layerFilter)}
	if overlay {
		opts = append(opts, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	}
	if _, err := archive.Apply(ctx, root, tarStream, opts...); err != nil {
		// A damaged blob usually breaks the decompressor first; say what
		// really happened when the digest confirms it.
		if ctx.Err() == nil && !noSpace(err) {
			if _, derr := io.Copy(io.Discard, onlyReader{raw}); derr == nil && !outer.Verified() {
				return &Error{Code: CodeInvalid, Msg: what + ": content does not match its digest"}
			}
		}
		return classify(what+": apply", err)
	}
	// archive.Apply stops at the tar end marker: read the rest so the
	// digests (and the cipher's HMAC) cover the whole blob.
	if _, err := io.Copy(io.Discard, onlyReader{tarStream}); err != nil {
		return classify(what, err)
	}
	if _, err := io.Copy(io.Discard, onlyReader{r}); err != nil {
		return classify(what, err)
	}
	if !outer.Verified() {
		return &Error{Code: CodeInvalid, Msg: what + ": content does not match its digest"}
	}
	if inner != nil && !inner.Verified() {
		return &Error{Code: CodeInvalid, Msg: what + ": decrypted content does not match its digest"}
	}
	if got := diff.Digest(); got != info.DiffID {
		return &Error{Code: CodeInvalid, Msg: fmt.Sprintf("%s: its uncompressed content is %s, the image config's diff_id says %s", what, got, info.DiffID)}
	}
	return nil
}

// onlyReader hides WriteTo, so io.Copy drains with plain reads.
type onlyReader struct{ io.Reader }

// decompress opens a gzip, zstd or plain tar stream, told apart by its
// magic bytes (media types are not trusted for this). The standard
// library's gzip reads in the caller's goroutine.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// layerFilter leaves device nodes out: a container's /dev comes from the
// runtime, and a block or char device left elsewhere in a rootfs would hand
// the container raw access to a guest device. (archive.Apply itself refuses
// trusted.* attributes, so a layer cannot carry overlayfs's own opaque or
// redirect marks; TestHostileLayersAreContained checks both.)
func layerFilter(h *tar.Header) (bool, error) {
	return h.Typeflag != tar.TypeChar && h.Typeflag != tar.TypeBlock, nil
}

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// pubOptsAnnotation carries ocicrypt's public block-cipher options.
const pubOptsAnnotation = "org.opencontainers.image.enc.pubopts"

// decryptLayer opens an ocicrypt layer whose key the CoCo key provider
// wrapped; it returns the plaintext stream and its expected digest.
func decryptLayer(ctx context.Context, fetch Fetcher, ann map[string]string, enc io.Reader) (io.Reader, digest.Digest, error) {
	b64, ok := ann[AnnotationID]
	if !ok {
		var schemes []string
		for k := range ann {
			if s, ok := strings.CutPrefix(k, "org.opencontainers.image.enc.keys."); ok {
				schemes = append(schemes, s)
			}
		}
		return nil, "", &Error{Code: CodeUnsupported, Msg: fmt.Sprintf("encrypted layer has no %s key (it has %v); cdh-proxy unwraps only CoCo key-provider keys", AnnotationID, schemes)}
	}
	privJSON, err := unwrapAnnotation(ctx, fetch, b64)
	if err != nil {
		return nil, "", err
	}
	defer clear(privJSON)
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal(privJSON, &priv); err != nil {
		return nil, "", &Error{Code: CodeInvalid, Msg: "unwrapped layer options are not ocicrypt's JSON"}
	}
	var pub blockcipher.PublicLayerBlockCipherOptions
	if s := ann[pubOptsAnnotation]; s != "" {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || json.Unmarshal(raw, &pub) != nil {
			return nil, "", &Error{Code: CodeInvalid, Msg: "layer annotation " + pubOptsAnnotation + " is malformed"}
		}
	}
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, "", err
	}
	plain, _, err := h.Decrypt(enc, blockcipher.LayerBlockCipherOptions{Public: pub, Private: priv})
	if err != nil {
		return nil, "", &Error{Code: CodeInvalid, Msg: "layer decryption", Err: err}
	}
	return plain, priv.Digest, nil
}

// layerStore keeps each layer once, unpacked in overlay form, at
// <dir>/<algorithm>-<hex>. A layer appears there by rename, so a name that
// exists is a whole, verified layer. Concurrent needs of one layer share
// one download.
type layerStore struct {
	dir string
	log *slog.Logger

	mu       sync.Mutex
	inflight map[digest.Digest]*flight
	wg       sync.WaitGroup
	closed   bool

	hooks storeHooks
}

type flight struct {
	done      chan struct{}
	err       error
	waiters   int
	abandoned bool // every waiter left and it was cancelled: nobody may join
	cancel    context.CancelFunc
}

// storeHooks are test seams: each, when set, runs at one point of ensure
// or of a download, so tests can order two pulls without timing.
type storeHooks struct {
	afterStat  func() // between ensure's look for the layer and the lock
	waiting    func() // ensure is about to wait on a download
	beforeDone func() // a download ended, before it leaves inflight
}

func (storeHooks) run(f func()) {
	if f != nil {
		f()
	}
}

func newLayerStore(dir string, log *slog.Logger) *layerStore {
	return &layerStore{dir: dir, log: log, inflight: map[digest.Digest]*flight{}}
}

func (s *layerStore) path(d digest.Digest) string {
	return filepath.Join(s.dir, d.Algorithm().String()+"-"+d.Encoded())
}

// ensureAll makes every layer present, at most parallel downloads at once,
// and returns their directories bottom first.
func (s *layerStore) ensureAll(ctx context.Context, infos []layer, parallel int, f *fetchLayer, bytes *int64) ([]string, error) {
	var counted atomic.Int64
	defer func() { *bytes += counted.Load() }()
	dirs := make([]string, len(infos))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for i, info := range infos {
		if err := info.Digest.Validate(); err != nil {
			return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("%s layer %d: bad digest", f.image, i), Err: err}
		}
		dirs[i] = s.path(info.Digest)
		g.Go(func() error { return s.ensure(gctx, info, f, &counted) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return dirs, nil
}

// ensure waits until the layer is present. The download runs in a
// goroutine of the store, not of the caller: a second pull of the same
// layer joins it, and it is cancelled only when every caller has left. A
// pull that finds a download its callers abandoned waits for it to end and
// starts its own.
func (s *layerStore) ensure(ctx context.Context, info layer, f *fetchLayer, counted *atomic.Int64) error {
	final := s.path(info.Digest)
	gaveUp := func() error { return classify(f.image+" layer "+info.Digest.String(), ctx.Err()) }
	for {
		if _, err := os.Stat(final); err == nil {
			return nil
		}
		s.hooks.run(s.hooks.afterStat)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return &Error{Code: CodeUnavailable, Msg: "image pull is shutting down"}
		}
		fl, ok := s.inflight[info.Digest]
		switch {
		case ok && fl.abandoned:
			s.mu.Unlock()
			s.hooks.run(s.hooks.waiting)
			select {
			case <-fl.done:
				continue
			case <-ctx.Done():
				return gaveUp()
			}
		case !ok:
			// A download that finished since the look above renamed the
			// layer into place before it left inflight: look again, under
			// the lock, rather than download it twice.
			if _, err := os.Stat(final); err == nil {
				s.mu.Unlock()
				return nil
			}
			fl = s.start(info, f, counted)
		}
		fl.waiters++
		s.mu.Unlock()
		s.hooks.run(s.hooks.waiting)
		select {
		case <-fl.done:
			s.leave(fl)
			return fl.err
		case <-ctx.Done():
			s.leave(fl)
			return gaveUp()
		}
	}
}

// start begins downloading a layer; s.mu is held.
func (s *layerStore) start(info layer, f *fetchLayer, counted *atomic.Int64) *flight {
	wctx, cancel := context.WithCancel(context.Background())
	fl := &flight{done: make(chan struct{}), cancel: cancel}
	s.inflight[info.Digest] = fl
	s.wg.Add(1)
	f.src.acquire()
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer f.src.release()
		err := s.unpack(wctx, info, f, counted)
		s.hooks.run(s.hooks.beforeDone)
		s.mu.Lock()
		delete(s.inflight, info.Digest)
		fl.err = err
		s.mu.Unlock()
		close(fl.done)
	}()
	return fl
}

func (s *layerStore) leave(fl *flight) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fl.waiters--
	if fl.waiters == 0 {
		fl.abandoned = true
		fl.cancel()
	}
}

// unpack applies one layer into a scratch directory beside its final name
// and renames it into place once every check passed.
func (s *layerStore) unpack(ctx context.Context, info layer, f *fetchLayer, counted *atomic.Int64) error {
	tmp, err := os.MkdirTemp(s.dir, ".tmp-")
	if err != nil {
		return classify("image work_dir", err)
	}
	if err := f.apply(ctx, info, tmp, true, counted); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp's 0700 would hide / from the container's users
		os.RemoveAll(tmp)
		return classify("image work_dir", err)
	}
	if err := os.Rename(tmp, s.path(info.Digest)); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(s.path(info.Digest)); serr == nil {
			return nil
		}
		return classify("image work_dir", err)
	}
	return nil
}

func (s *layerStore) close() {
	s.mu.Lock()
	s.closed = true
	for _, fl := range s.inflight {
		fl.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
