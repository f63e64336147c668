package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pullPeers pulls ref cold, alternating a private containerd (Debian's,
// what a Kubernetes node pulls with: fetch, verify, unpack into its
// overlayfs snapshotter) and cdh-proxy's PullImage (fetch, verify, unpack,
// overlay rootfs mounted), each round on a fresh tmpfs as in a guest, and
// returns the per-round times.
func (b *bench) pullPeers(kbsURL, regHost, ref string, rounds int) (ctrd, ours []time.Duration, err error) {
	for _, tool := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("%s is missing: make bench installs Debian's containerd (scripts/need.sh containerd containerd)", tool)
		}
	}
	for r := range rounds {
		order := []string{"containerd", "cdh-proxy"}
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, who := range order {
			var d time.Duration
			var err error
			if who == "containerd" {
				d, err = onTmpfs(func(dir string) (time.Duration, error) { return containerdPull(dir, ref) })
				ctrd = append(ctrd, d)
			} else {
				d, err = onTmpfs(func(dir string) (time.Duration, error) { return b.cdhProxyPull(dir, kbsURL, regHost, ref) })
				ours = append(ours, d)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("round %d, %s: %w", r+1, who, err)
			}
		}
	}
	return ctrd, ours, nil
}

// onTmpfs runs f in a fresh tmpfs, unmounted and removed after.
func onTmpfs(f func(dir string) (time.Duration, error)) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "bench-peer")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4g,mode=0700"); err != nil {
		return 0, fmt.Errorf("mount a tmpfs (needs root): %w", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	return f(dir)
}

// containerdPull starts containerd with its root, state and socket in dir
// (no CRI), times `ctr images pull` (which unpacks), and stops it.
func containerdPull(dir, ref string) (time.Duration, error) {
	sock := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock), 0o600); err != nil {
		return 0, err
	}
	var logs strings.Builder
	cmd := exec.Command("containerd", "--config", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}()
	if err := waitDial(sock, 30*time.Second); err != nil {
		return 0, fmt.Errorf("containerd did not listen: %w\n%s", err, logs.String())
	}
	start := time.Now()
	out, err := exec.Command("ctr", "--address", sock, "--namespace", "bench", "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("ctr images pull: %w\n%s", err, out)
	}
	return d, nil
}

// cdhProxyPull starts bin/cdh-proxy with work_dir in dir and times one
// PullImage into a bundle in dir.
func (b *bench) cdhProxyPull(dir, kbsURL, regHost, ref string) (time.Duration, error) {
	pp, err := b.startPullProxy(dir, kbsURL, regHost)
	if err != nil {
		return 0, err
	}
	defer pp.close()
	return pp.pull(ref)
}

func waitDial(sock string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errors.New("timed out"), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
