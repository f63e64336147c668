// Package imagepull is guest image pull: kata-agent's
// api.ImagePullService/PullImage. It resolves the reference through the
// [image] registry rules, checks the containers-policy.json signature
// policy, fetches layers (decrypting ocicrypt layers with keys from the
// KBS), stores each layer once under work_dir and mounts an overlay of them
// at <bundle_path>/rootfs.
//
// The libraries are the container ecosystem's own: containers/image for
// registries, registries.conf, auth.json, policy and signatures;
// containerd's archive package to apply layers; ocicrypt's block cipher to
// decrypt them. Nothing here runs until the first pull.
package imagepull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/image"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"golang.org/x/sys/unix"
)

// Config is what a pull runs with: cdh.toml's [image] (config.Image),
// with the inline registry rules already in registries.conf form.
type Config struct {
	WorkDir                     string
	MaxConcurrentLayerDownloads int // <= 0: DefaultLayerDownloads
	PolicyURI                   string
	Policy                      string // inline containers-policy.json; PolicyURI wins
	SigstoreConfigURI           string
	AuthURI                     string
	RegistriesURI               string
	Registries                  []byte // registries.conf TOML; RegistriesURI wins
	ExtraRootCertificates       []string
	HTTPSProxy, HTTPProxy       string
	NoProxy                     string
}

// DefaultLayerDownloads is image-rs's default parallelism.
const DefaultLayerDownloads = 3

// Fetcher reads a kbs:/// resource (core.Secrets: the resource cache).
type Fetcher interface {
	Fetch(ctx context.Context, uri string) ([]byte, error)
}

// Observer records finished pulls (metrics.Metrics).
type Observer interface {
	ObserveImagePull(result string, bytes int64, d time.Duration)
}

// MountFunc is unix.Mount's shape; tests inject one to play a guest
// without overlayfs.
type MountFunc func(source, target, fstype string, flags uintptr, data string) error

// Options are a Puller's collaborators.
type Options struct {
	Logger   *slog.Logger
	Observer Observer
	Mount    MountFunc // nil → unix.Mount
	// FetchBudget bounds each KBS fetch of a pull (policy, keys,
	// credentials, image keys), as --budget bounds GetResource: a KBS
	// outage fails the pull in seconds instead of holding it to kata's
	// 1200 s deadline. Zero: only the pull's deadline.
	FetchBudget time.Duration
}

// Puller pulls images for PullImage. Its zero work happens in New: the
// work_dir is prepared on the first pull.
type Puller struct {
	cfg   Config
	fetch Fetcher
	log   *slog.Logger
	obs   Observer
	mount MountFunc

	setupMu sync.Mutex
	ready   bool
	overlay bool // overlayfs works here; otherwise rootfs is unpacked flat

	layers *layerStore
}

// New returns a Puller; it does no I/O.
func New(cfg Config, fetch Fetcher, o Options) *Puller {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Mount == nil {
		o.Mount = unix.Mount
	}
	if cfg.MaxConcurrentLayerDownloads <= 0 {
		cfg.MaxConcurrentLayerDownloads = DefaultLayerDownloads
	}
	if o.FetchBudget > 0 {
		fetch = budgeted{fetch, o.FetchBudget}
	}
	log := o.Logger.With("component", "image-pull")
	return &Puller{
		cfg: cfg, fetch: fetch, log: log, obs: o.Observer, mount: o.Mount,
		layers: newLayerStore(filepath.Join(cfg.WorkDir, "layers"), log),
	}
}

// Close stops layer downloads no caller waits for any more and waits for
// them to end.
func (p *Puller) Close() { p.layers.close() }

// UnwrapKey answers the key-provider service (see the package function).
func (p *Puller) UnwrapKey(ctx context.Context, input []byte) ([]byte, error) {
	return UnwrapKey(ctx, p.fetch, input)
}

// Pull pulls imageURL and mounts its rootfs at <bundlePath>/rootfs. It
// returns the digest of the image's manifest: for a multi-platform image
// this platform's, not the index's, as image-rs answers.
func (p *Puller) Pull(ctx context.Context, imageURL, bundlePath string) (string, error) {
	start := time.Now()
	var bytes int64
	dg, err := p.pull(ctx, imageURL, bundlePath, &bytes)
	result := "ok"
	if err != nil {
		result = resultLabel(err)
		p.log.Warn("image pull failed", "image", imageURL, "bundle", bundlePath, "err", err)
	} else {
		p.log.Info("image pulled", "image", imageURL, "digest", dg, "bundle", bundlePath,
			"bytes", bytes, "seconds", time.Since(start).Seconds(), "overlay", p.overlay)
	}
	if p.obs != nil {
		p.obs.ObserveImagePull(result, bytes, time.Since(start))
	}
	return dg, err
}

func resultLabel(err error) string {
	var e *Error
	if !errors.As(err, &e) {
		return "error"
	}
	switch e.Code {
	case CodeDenied:
		return "denied"
	case CodeNotFound:
		return "not_found"
	case CodeFromFetch:
		return "kbs_error"
	case CodeExhausted:
		return "no_space"
	case CodeUnavailable:
		return "unavailable"
	case CodeDeadline:
		return "deadline"
	case CodeInvalid, CodeUnsupported:
		return "invalid"
	}
	return "error"
}

func (p *Puller) pull(ctx context.Context, imageURL, bundlePath string, bytes *int64) (string, error) {
	rootfs, err := checkBundle(bundlePath)
	if err != nil {
		return "", err
	}
	if err := p.setup(); err != nil {
		return "", err
	}
	e, err := p.buildEnv(ctx)
	if err != nil {
		return "", err
	}
	cands, err := candidates(e.sys, imageURL)
	if err != nil {
		return "", err
	}
	var errs []string
	for _, named := range cands {
		dg, err := p.pullOne(ctx, e, named, bundlePath, rootfs, bytes)
		if err == nil {
			return dg, nil
		}
		// Only "not there" moves on to the next search registry, as
		// podman does; anything else is this image's answer.
		var pe *Error
		if len(cands) == 1 || !errors.As(err, &pe) || (pe.Code != CodeNotFound && pe.Code != CodeUnavailable) {
			return "", err
		}
		errs = append(errs, err.Error())
	}
	return "", &Error{Code: CodeNotFound, Msg: fmt.Sprintf("short name %q: not found in any unqualified-search registry: %s", imageURL, strings.Join(errs, "; "))}
}

// checkBundle accepts the empty bundle directory kata-agent creates and
// returns where the rootfs goes.
func checkBundle(bundle string) (string, error) {
	if bundle == "" || !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return "", &Error{Code: CodeInvalid, Msg: fmt.Sprintf("bundle_path %q must be a clean absolute path", bundle)}
	}
	st, err := os.Stat(bundle)
	if err != nil || !st.IsDir() {
		return "", &Error{Code: CodeInvalid, Msg: fmt.Sprintf("bundle_path %q is not a directory", bundle)}
	}
	rootfs := filepath.Join(bundle, "rootfs")
	if ents, err := os.ReadDir(rootfs); err == nil && len(ents) > 0 {
		return "", &Error{Code: CodeInvalid, Msg: fmt.Sprintf("bundle_path %q already has a rootfs", bundle)}
	}
	return rootfs, nil
}

// setup prepares work_dir on the first pull (and again after a failure):
// it removes what an interrupted pull left and finds out whether overlayfs
// works here.
func (p *Puller) setup() error {
	p.setupMu.Lock()
	defer p.setupMu.Unlock()
	if p.ready {
		return nil
	}
	for _, d := range []string{"layers", "conf", "tmp"} {
		if err := os.MkdirAll(filepath.Join(p.cfg.WorkDir, d), 0o700); err != nil {
			return classify("image work_dir "+p.cfg.WorkDir, err)
		}
	}
	// Leftovers of a pull that did not finish: unpacks never renamed into
	// place and temporary files. Nothing uses them (a layer is only used
	// once renamed), so they go.
	for _, d := range []string{"layers", "conf"} {
		ents, _ := os.ReadDir(filepath.Join(p.cfg.WorkDir, d))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				os.RemoveAll(filepath.Join(p.cfg.WorkDir, d, e.Name()))
			}
		}
	}
	ents, _ := os.ReadDir(filepath.Join(p.cfg.WorkDir, "tmp"))
	for _, e := range ents {
		os.RemoveAll(filepath.Join(p.cfg.WorkDir, "tmp", e.Name()))
	}
	if err := p.probeOverlay(); err != nil {
		p.log.Warn("overlayfs is not available: each container's rootfs is unpacked flat, without sharing layers", "err", err)
	} else {
		p.overlay = true
	}
	p.ready = true
	return nil
}

// candidates resolves a reference as kata passes it. A short name (no
// registry) is tried in each unqualified-search registry in order; with
// none configured it means docker.io, as image-rs reads it.
func candidates(sys *types.SystemContext, ref string) ([]reference.Named, error) {
	ref = strings.TrimPrefix(ref, "docker://")
	bad := func(err error) error {
		return &Error{Code: CodeInvalid, Msg: fmt.Sprintf("image reference %q", ref), Err: err}
	}
	first, _, hasSlash := strings.Cut(ref, "/")
	short := !hasSlash || (!strings.ContainsAny(first, ".:") && first != "localhost")
	if short {
		search, err := sysregistriesv2.UnqualifiedSearchRegistries(sys)
		if err != nil {
			return nil, &Error{Code: CodeInvalid, Msg: "registry configuration", Err: err}
		}
		if len(search) > 0 {
			var out []reference.Named
			for _, reg := range search {
				n, err := reference.ParseNormalizedNamed(reg + "/" + ref)
				if err != nil {
					return nil, bad(err)
				}
				out = append(out, reference.TagNameOnly(n))
			}
			return out, nil
		}
	}
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, bad(err)
	}
	return []reference.Named{reference.TagNameOnly(n)}, nil
}

func (p *Puller) pullOne(ctx context.Context, e *env, named reference.Named, bundle, rootfs string, bytes *int64) (string, error) {
	name := named.String()
	ref, err := docker.NewReference(named)
	if err != nil {
		return "", &Error{Code: CodeInvalid, Msg: "image reference " + name, Err: err}
	}
	rawSrc, err := ref.NewImageSource(ctx, e.sys)
	if err != nil {
		return "", registryError(ctx, name, err)
	}
	// A download this pull starts may outlive it (another pull joined it),
	// so the source closes when the last of them is done with it.
	src := newSharedSource(rawSrc)
	defer src.release()
	unparsed := image.UnparsedInstance(src.ImageSource, nil)
	mb, mime, err := unparsed.Manifest(ctx)
	if err != nil {
		return "", registryError(ctx, name, err)
	}
	dg, err := manifest.Digest(mb)
	if err != nil {
		return "", &Error{Code: CodeInvalid, Msg: name + ": manifest", Err: err}
	}

	pc, err := signature.NewPolicyContext(e.policy)
	if err != nil {
		return "", &Error{Code: CodeInvalid, Msg: "image security policy", Err: err}
	}
	allowed, err := pc.IsRunningImageAllowed(ctx, unparsed)
	_ = pc.Destroy()
	if !allowed {
		reason := "rejected"
		if err != nil {
			reason = err.Error()
		}
		return "", &Error{Code: CodeDenied, Msg: fmt.Sprintf("image %s rejected by the image security policy (%s): %s", name, e.policyNote, reason)}
	}

	img, err := image.FromUnparsedImage(ctx, e.sys, unparsed)
	if err != nil {
		return "", registryError(ctx, name, err)
	}
	// For an index, the answer is this platform's manifest, as image-rs
	// answers and measures it: what a KBS policy on the pull matches.
	if manifest.MIMETypeIsMultiImage(mime) {
		list, err := manifest.ListFromBlob(mb, mime)
		if err != nil {
			return "", &Error{Code: CodeInvalid, Msg: name + ": manifest list", Err: err}
		}
		if dg, err = list.ChooseInstance(e.sys); err != nil {
			return "", &Error{Code: CodeNotFound, Msg: name + ": no image for this platform", Err: err}
		}
	}
	infos := img.LayerInfos()
	if len(infos) == 0 {
		return "", &Error{Code: CodeInvalid, Msg: name + " has no layers"}
	}
	config, err := img.OCIConfig(ctx)
	if err != nil {
		return "", registryError(ctx, name+": image config", err)
	}
	if n := len(config.RootFS.DiffIDs); n != len(infos) {
		return "", &Error{Code: CodeInvalid, Msg: fmt.Sprintf("%s: the image config lists %d diff_ids for %d layers", name, n, len(infos))}
	}
	layers := make([]layer, len(infos))
	for i, info := range infos {
		layers[i] = layer{BlobInfo: info, DiffID: config.RootFS.DiffIDs[i]}
	}
	fl := &fetchLayer{src: src, fetch: p.fetch, image: name}
	if p.overlay {
		dirs, err := p.layers.ensureAll(ctx, layers, p.cfg.MaxConcurrentLayerDownloads, fl, bytes)
		if err != nil {
			return "", err
		}
		if err := p.mountOverlay(dirs, bundle, rootfs); err != nil {
			return "", err
		}
		return dg.String(), nil
	}
	if err := p.unpackFlat(ctx, layers, fl, rootfs, bytes); err != nil {
		return "", err
	}
	return dg.String(), nil
}

// registryError gives registry failures their code. containers/image's
// errors carry no secrets (credentials are never echoed).
func registryError(ctx context.Context, name string, err error) error {
	if ctx.Err() != nil {
		return classify(name, ctx.Err())
	}
	msg := err.Error()
	var unauth docker.ErrUnauthorizedForCredentials
	switch {
	case errors.As(err, &unauth):
		return &Error{Code: CodeDenied, Msg: name + ": the registry refused the credentials", Err: err}
	case strings.Contains(msg, "is blocked in"):
		return &Error{Code: CodeDenied, Msg: name + ": registry blocked by the registry configuration", Err: err}
	case strings.Contains(msg, "manifest unknown"), strings.Contains(msg, "name unknown"),
		strings.Contains(msg, "not found"), strings.Contains(msg, "no image found in"):
		return &Error{Code: CodeNotFound, Msg: name + ": not found", Err: err}
	case strings.Contains(msg, "authentication required"), strings.Contains(msg, "unauthorized"), strings.Contains(msg, "denied"):
		return &Error{Code: CodeDenied, Msg: name + ": the registry denied access", Err: err}
	}
	return &Error{Code: CodeUnavailable, Msg: name + ": registry", Err: err}
}

// sharedSource is an image source closed when its last user releases it.
type sharedSource struct {
	types.ImageSource
	refs atomic.Int32
}

func newSharedSource(src types.ImageSource) *sharedSource {
	s := &sharedSource{ImageSource: src}
	s.refs.Store(1)
	return s
}

func (s *sharedSource) acquire() { s.refs.Add(1) }

func (s *sharedSource) release() {
	if s.refs.Add(-1) == 0 {
		_ = s.ImageSource.Close()
	}
}

// budgeted bounds every fetch of a Fetcher.
type budgeted struct {
	f      Fetcher
	budget time.Duration
}

func (b budgeted) Fetch(ctx context.Context, uri string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, b.budget)
	defer cancel()
	return b.f.Fetch(ctx, uri)
}
