package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/api/cdh"
	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

// benchTB lets imagetest run outside a test: Fatal panics (p6 recovers
// it into an error), Cleanup runs when p6 returns.
type benchTB struct{ cleanups []func() }

func (*benchTB) Helper()            {}
func (*benchTB) Fatal(args ...any)  { panic(benchFatal(fmt.Sprint(args...))) }
func (t *benchTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *benchTB) close() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

type benchFatal string

// p6 pulls a 5-layer image of incompressible data (~100 MB on the wire)
// from an in-process registry through the real binary's PullImage, twice:
// the second pull finds every layer stored.
func (b *bench) p6() (err error) {
	tb := &benchTB{}
	defer tb.close()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(benchFatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("P6: %s", f)
		}
	}()
	layerBytes := 20 << 20
	if b.short {
		layerBytes = 256 << 10
	}
	var layers []v1.Layer
	for i := range 5 {
		buf := make([]byte, layerBytes)
		rand.Read(buf)
		layers = append(layers, imagetest.Layer(tb, imagetest.Entry{Name: fmt.Sprintf("layer%d/blob", i), Body: string(buf)}))
	}
	var wire int64
	for _, l := range layers {
		s, _ := l.Size()
		wire += s
	}
	reg := imagetest.NewRegistry(tb, false)
	reg.Push(tb, "bench/app:v1", imagetest.Image(tb, layers...))

	_, ts, err := kbsServer(func(kbs.TreeStore) error { return nil })
	if err != nil {
		return err
	}
	defer ts.Close()
	dir, err := os.MkdirTemp("", "bench-pull")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pp, err := b.startPullProxy(dir, ts.URL, reg.Host)
	if err != nil {
		return err
	}
	defer pp.close()
	p := pp.p
	rssBefore := hwm(p.Cmd.Process.Pid)
	pull := func() (time.Duration, error) { return pp.pull(reg.Host + "/bench/app:v1") }
	first, err := pull()
	if err != nil {
		return fmt.Errorf("P6 first pull: %w", err)
	}
	peakFirst := hwm(p.Cmd.Process.Pid)
	second, err := pull()
	if err != nil {
		return fmt.Errorf("P6 second pull: %w", err)
	}
	peakSecond := hwm(p.Cmd.Process.Pid)
	gets := 0
	for _, l := range layers {
		d, _ := l.Digest()
		gets += reg.BlobGets(d)
	}
	b.printf("## P6 — guest image pull\n\n")
	b.printf("PullImage over the CDH socket of `%s` (ttrpc, as kata-agent calls it) for a 5-layer image of incompressible data, %.1f MB on the wire, from an in-process registry (go-containerregistry's `pkg/registry`, plain HTTP on loopback, in the benchmark process); overlay rootfs.\n\n", b.proxyBin, float64(wire)/1e6)
	b.printf("| pull | time | peak RSS of cdh-proxy (VmHWM) | layer downloads |\n|---|---|---|---|\n")
	b.printf("| before any pull | | %.1f MiB | |\n", rssBefore)
	b.printf("| first (5 layers fetched, verified, unpacked) | %s | %.1f MiB | %d |\n", secs(first), peakFirst, gets)
	after := 0
	for _, l := range layers {
		d, _ := l.Digest()
		after += reg.BlobGets(d)
	}
	b.printf("| second, same image (every layer stored: de-duplicated) | %s | %.1f MiB | %d more |\n\n", secs(second), peakSecond, after-gets)
	b.secondPullGets = after - gets

	rounds := 5
	if b.short {
		rounds = 1
	}
	ref := reg.Host + "/bench/app:v1"
	ctrd, ours, err := b.pullPeers(ts.URL, reg.Host, ref, rounds)
	if err != nil {
		return fmt.Errorf("P6 side by side: %w", err)
	}
	b.printf("### Side by side with containerd\n\n")
	b.printf("The same image from the same registry, cold each time: a private containerd (Debian's `containerd`, root, state and socket in a temporary directory, CRI disabled; `ctr images pull --plain-http --snapshotter overlayfs`, which fetches, verifies and unpacks into its overlayfs snapshotter) and a fresh `%s` (PullImage: fetch, verify, unpack, overlay rootfs mounted). Each round runs both on a fresh tmpfs, as in a guest, in alternating order; the daemons are started before the clock and stopped after.\n\n", b.proxyBin)
	b.printf("| round | containerd | cdh-proxy |\n|---|---|---|\n")
	for i := range ctrd {
		b.printf("| %d | %s | %s |\n", i+1, secs(ctrd[i]), secs(ours[i]))
	}
	mc, mo := medianDur(ctrd), medianDur(ours)
	b.printf("| **median** | **%s** | **%s** |\n\ncdh-proxy takes %.2f× containerd's time (median of %d rounds; below 1 is faster).\n\n", secs(mc), secs(mo), mo.Seconds()/mc.Seconds(), rounds)
	b.peerRatio = mo.Seconds() / mc.Seconds()
	return nil
}

func secs(d time.Duration) string {
	if d < time.Second {
		return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

// hwm is a process's peak resident set (VmHWM) in MiB.
func hwm(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// pullProxy is bin/cdh-proxy serving PullImage on its CDH socket, with
// work_dir and bundles in one directory, and a ttrpc client as kata's.
type pullProxy struct {
	p   *proc.Proc
	c   *ttrpc.Client
	dir string
}

// startPullProxy starts it for the registry at regHost (plain HTTP).
func (b *bench) startPullProxy(dir, kbsURL, regHost string) (*pullProxy, error) {
	sock := filepath.Join(dir, "cdh.sock")
	toml := filepath.Join(dir, "cdh.toml")
	if err := os.WriteFile(toml, fmt.Appendf(nil, "[kbc]\nurl = %q\n[image]\nwork_dir = %q\n[[image.registry_config.registry]]\nlocation = %q\ninsecure = true\n",
		kbsURL, filepath.Join(dir, "work"), regHost), 0o600); err != nil {
		return nil, err
	}
	p, err := b.startProxy(kbsURL, "-c", toml, "--cdh-socket", "unix://"+sock)
	if err != nil {
		return nil, err
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		p.Stop(10 * time.Second)
		return nil, err
	}
	return &pullProxy{p: p, c: ttrpc.NewClient(conn), dir: dir}, nil
}

// pull times one PullImage of ref into a fresh bundle (its rootfs is
// unmounted after).
func (pp *pullProxy) pull(ref string) (time.Duration, error) {
	bundle, err := os.MkdirTemp(pp.dir, "bundle")
	if err != nil {
		return 0, err
	}
	defer unix.Unmount(filepath.Join(bundle, "rootfs"), unix.MNT_DETACH)
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Second)
	defer cancel()
	start := time.Now()
	_, err = cdh.NewImagePullServiceClient(pp.c).PullImage(ctx, &cdh.ImagePullRequest{ImageUrl: ref, BundlePath: bundle})
	return time.Since(start), err
}

func (pp *pullProxy) close() {
	pp.c.Close()
	pp.p.Stop(10 * time.Second)
}
