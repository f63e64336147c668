package imagepull

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
)

// withDiffIDs is img with its config's diff_ids replaced.
func withDiffIDs(t *testing.T, img v1.Image, ids ...v1.Hash) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = ids
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A layer whose uncompressed content is not the diff_id the image's
// config names is refused, as image-rs and containerd refuse it: nothing
// is stored or mounted, and the error names both digests. Also without
// overlayfs, and when the config lists another number of layers.
func TestConfigDiffIDsChecked(t *testing.T) {
	for _, overlay := range []bool{true, false} {
		t.Run(map[bool]string{true: "overlay", false: "flat"}[overlay], func(t *testing.T) {
			reg := imagetest.NewRegistry(t, false)
			good := imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})
			other := imagetest.Layer(t, imagetest.Entry{Name: "b", Body: "b"})
			gid, _ := good.DiffID()
			oid, _ := other.DiffID()
			base := imagetest.Image(t, good, other)
			reg.Push(t, "ok:1", base)
			reg.Push(t, "swapped:1", withDiffIDs(t, base, gid, gid)) // the second layer's is wrong
			reg.Push(t, "short:1", withDiffIDs(t, base, gid))
			cfg := forRegistry(t, reg)
			opts := overlayOr(overlay)
			p := New(cfg, newFakeKBS(nil), opts)
			defer p.Close()
			pullOK(t, p, reg.Host+"/ok:1")

			p2 := New(forRegistry(t, reg), newFakeKBS(nil), opts)
			defer p2.Close()
			b := bundle(t)
			_, err := p2.Pull(t.Context(), reg.Host+"/swapped:1", b)
			if codeOf(err) != CodeInvalid || !strings.Contains(err.Error(), oid.String()) || !strings.Contains(err.Error(), gid.String()) || !strings.Contains(err.Error(), "diff_id") {
				t.Fatalf("wrong diff_id: %v, want CodeInvalid naming both digests", err)
			}
			mustNotExist(t, filepath.Join(b, "rootfs", "b"))
			p2.layers.close()
			for _, e := range readDir(t, filepath.Join(p2.cfg.WorkDir, "layers")) {
				if strings.HasSuffix(e, strings.TrimPrefix(must(other.Digest()).String(), "sha256:")) {
					t.Errorf("the mismatching layer was stored: %s", e)
				}
			}
			if _, err := p2.Pull(t.Context(), reg.Host+"/short:1", bundle(t)); codeOf(err) != CodeInvalid || !strings.Contains(err.Error(), "1 diff_ids for 2 layers") {
				t.Errorf("diff_ids short of the layers: %v", err)
			}
		})
	}
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
