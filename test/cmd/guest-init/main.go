// Command guest-init is PID 1 of the guest test bed (test/guestvm): it
// sets the guest up as a kata guest is set up, then plays kata-agent's part
// in starting the guest components — the same paths, arguments,
// environment, initdata files and socket waits as kata-agent's built-in
// launch plan (src/agent/src/main.rs, builtin_coco_plan and
// launch_process) — runs the host's command, stops the drop-ins with
// SIGTERM and powers the guest off.
//
// Installed as kata-ttrpc it is a kata-shaped ttrpc client instead: one
// connection, the calls kata-agent makes, kata's deadlines.
//
// It is a test tool and never shipped.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"

	"github.com/cdh-proxy/cdh-proxy/test/guestvm"
)

// kata-agent's constants (src/agent/src/main.rs, initdata.rs, config.rs).
const (
	aaPath        = "/usr/local/bin/attestation-agent"
	aaSocket      = "/run/confidential-containers/attestation-agent/attestation-agent.sock"
	cdhPath       = "/usr/local/bin/confidential-data-hub"
	cdhSocket     = "/run/confidential-containers/cdh.sock"
	asrPath       = "/usr/local/bin/api-server-rest"
	ocicryptPath  = "/etc/ocicrypt_config.json"
	initDataDir   = "/run/confidential-containers/initdata"
	launchTimeout = 6 // agent.launch_process_timeout's default, seconds
	restAPI       = "resource"
	agentPath     = "/bin:/sbin/:/usr/bin/:/usr/sbin/"
)

func main() {
	if filepath.Base(os.Args[0]) == "kata-ttrpc" {
		os.Exit(client(os.Args[1:]))
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guest-init: runs as PID 1 of the guest test bed (or as kata-ttrpc)")
		os.Exit(2)
	}
	os.Setenv("PATH", agentPath) // as kata-agent does when it is init
	in := &initProc{con: os.Stdout}
	code := in.run()
	in.stop()
	in.mark(guestvm.KindExit, strconv.Itoa(code))
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) // qemu runs with -no-reboot
	select {}
}

type dropIn struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	code int
}

type initProc struct {
	launchTimeout int        // agent.launch_process_timeout, seconds
	mu            sync.Mutex // one writer of the console at a time
	con           io.Writer
	spec          guestvm.Spec
	procs         []*dropIn
	stopping      atomic.Bool // set before the drop-ins are sent SIGTERM
}

func (in *initProc) println(s string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	io.WriteString(in.con, s+"\n")
}

func (in *initProc) logf(format string, args ...any) {
	in.println("guest-init: " + fmt.Sprintf(format, args...))
}

func (in *initProc) mark(kind, text string) {
	in.println("@@" + in.spec.Token + ":" + kind + " " + text)
}

// run returns the command's exit status; a set-up failure is reported
// as "failed" and gives 125.
func (in *initProc) run() int {
	b, err := os.ReadFile(guestvm.SpecPath)
	if err == nil {
		err = json.Unmarshal(b, &in.spec)
	}
	if err != nil {
		in.logf("reading %s: %v", guestvm.SpecPath, err)
		return 125
	}
	in.launchTimeout = launchTimeout
	if err := in.setup(); err != nil {
		in.mark(guestvm.KindFailed, err.Error())
		return 125
	}
	if err := in.launch(); err != nil {
		// kata-agent fails the sandbox here.
		in.mark(guestvm.KindFailed, err.Error())
		return 125
	}
	in.mark(guestvm.KindReady, "")
	return in.command()
}

func (in *initProc) setup() error {
	mounts := []struct{ src, dst, fs, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"devpts", "/dev/pts", "devpts", "ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777"},
		// kata guests keep /run on tmpfs: sockets, initdata, image layers.
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fs, unix.MS_NOSUID, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dst, err)
		}
	}
	if err := loadModules(); err != nil {
		return err
	}
	// kata-agent takes agent.* options from the kernel command line; the
	// socket wait's is the one the test bed honours (a slow emulator on a
	// busy machine may want more than kata's 6 s).
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, tok := range strings.Fields(string(cmdline)) {
			if v, ok := strings.CutPrefix(tok, "agent.launch_process_timeout="); ok {
				n, err := strconv.Atoi(v)
				if err != nil || n <= 0 {
					return fmt.Errorf("agent.launch_process_timeout=%q: want a number of seconds", v)
				}
				in.launchTimeout = n
			}
		}
	}
	if err := unix.Mount("configfs", "/sys/kernel/config", "configfs", 0, ""); err != nil {
		return fmt.Errorf("mount configfs: %w", err)
	}
	if err := in.network(); err != nil {
		return err
	}
	if err := in.disks(); err != nil {
		return err
	}
	for _, f := range in.spec.Files {
		if err := copyFile(guestvm.StageDir+f, f); err != nil {
			return fmt.Errorf("--file %s: %w", f, err)
		}
	}
	if in.spec.InitData {
		if err := writeInitData(guestvm.InitDataStage); err != nil {
			return err
		}
	}
	return nil
}

func loadModules() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	dir := "/lib/modules/" + unix.ByteSliceToString(uts.Release[:])
	list, err := os.ReadFile("/lib/modules/load")
	if err != nil {
		return err
	}
	for _, m := range strings.Fields(string(list)) {
		f, err := os.Open(filepath.Join(dir, m))
		if err != nil {
			return fmt.Errorf("module %s: %w", m, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", m, err)
		}
	}
	return nil
}

// network configures QEMU's user-mode network: 10.0.2.15, gateway
// 10.0.2.2 (the host's loopback).
func (in *initProc) network() error {
	if _, err := waitPath("/sys/class/net/eth0", 10*time.Second); err != nil {
		return errors.New("no eth0 after loading virtio_net")
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "eth0", "up"},
		{"addr", "add", "10.0.2.15/24", "dev", "eth0"},
		{"route", "add", "default", "via", "10.0.2.2"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// disks links each virtio disk to /dev/<serial> (the host names it).
func (in *initProc) disks() error {
	devs, _ := filepath.Glob("/sys/block/vd*")
	for _, d := range devs {
		serial, err := os.ReadFile(filepath.Join(d, "serial"))
		if err != nil {
			return err
		}
		name := strings.TrimSpace(string(serial))
		if name == "" {
			continue
		}
		if err := os.Symlink("/dev/"+filepath.Base(d), "/dev/"+name); err != nil {
			return err
		}
		in.logf("disk /dev/%s -> /dev/%s", name, filepath.Base(d))
	}
	return nil
}

// writeInitData does what kata-agent's initialize_initdata does with the
// initdata it read: initdata.toml, and aa.toml/cdh.toml from its [data].
func writeInitData(src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var doc struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	if err := toml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("parse initdata failed: %w", err)
	}
	if err := os.MkdirAll(initDataDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(initDataDir+"/initdata.toml", b, 0o644); err != nil {
		return err
	}
	for _, k := range []string{"aa.toml", "cdh.toml"} {
		if v, ok := doc.Data[k]; ok {
			if err := os.WriteFile(initDataDir+"/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// env is kata-agent's environment as its children inherit it. The test
// bed has no TEE: AA_SAMPLE_ATTESTER_TEST selects the sample attester, as
// guest-components' own test guests do.
func (in *initProc) env(extra ...string) []string {
	env := []string{"PATH=" + agentPath, "HOME=/root", "AA_SAMPLE_ATTESTER_TEST=1"}
	env = append(env, in.spec.Env...)
	return append(env, extra...)
}

// launch is builtin_coco_plan + launch_guest_component_procs at the
// default agent.guest_components_procs (api-server-rest: all three).
func (in *initProc) launch() error {
	aaArgs := []string{"--attestation_sock", "unix://" + aaSocket}
	if in.spec.InitData {
		aaArgs = append(aaArgs, "--initdata-toml", initDataDir+"/initdata.toml")
	}
	plan := []struct {
		name, path string
		args       []string
		config     string
		env        []string
		socket     string
	}{
		{"attestation-agent", aaPath, aaArgs, initDataDir + "/aa.toml", nil, aaSocket},
		{"confidential-data-hub", cdhPath, nil, initDataDir + "/cdh.toml", []string{"OCICRYPT_KEYPROVIDER_CONFIG=" + ocicryptPath}, cdhSocket},
		{"api-server-rest", asrPath, []string{"--features", restAPI}, "", nil, ""},
	}
	// "Nothing is launched unless every binary of the plan exists."
	for _, p := range plan {
		if _, err := os.Stat(p.path); err != nil {
			return fmt.Errorf("%s not found", p.path)
		}
	}
	for _, p := range plan {
		args := p.args
		if p.config != "" {
			if _, err := os.Stat(p.config); err == nil {
				args = append(args, "-c", p.config)
			}
		}
		if p.socket != "" {
			os.Remove(p.socket)
		}
		if err := in.spawn(p.name, p.path, args, in.env(p.env...)); err != nil {
			return err
		}
		if p.socket != "" {
			if err := waitSocketAsKata(p.socket, in.launchTimeout); err != nil {
				return fmt.Errorf("launch_process %s failed: %w", p.path, err)
			}
		}
	}
	// kata does not wait for api-server-rest; a workload comes much later.
	// The test bed waits for its port so the command can use it at once.
	wait := time.Duration(max(30, in.launchTimeout)) * time.Second
	deadline := time.Now().Add(wait)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:8006")
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("api-server-rest: 127.0.0.1:8006 not listening after %s: %w", wait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (in *initProc) spawn(name, path string, args, env []string) error {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	in.logf("launch %s %s", path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("spawn %s: %w", path, err)
	}
	d := &dropIn{name: name, cmd: cmd, done: make(chan struct{})}
	in.procs = append(in.procs, d)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			in.println("[" + name + "] " + sc.Text())
		}
		d.code = exitCode(cmd.Wait())
		if !in.stopping.Load() {
			in.logf("%s exited on its own with status %d", name, d.code)
		}
		close(d.done)
	}()
	return nil
}

// waitSocketAsKata is wait_for_path_to_exist: a check each second, the
// first after one second, up to timeout attempts.
func waitSocketAsKata(path string, timeout int) error {
	for attempts := 0; ; attempts++ {
		time.Sleep(time.Second)
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if attempts >= timeout {
			return fmt.Errorf("wait for %s to exist timeout", path)
		}
	}
}

// command runs the host's command with the pids of the drop-ins in its
// environment (CDH_GUEST_PID_<NAME>, for memory readings).
func (in *initProc) command() int {
	var extra []string
	for _, d := range in.procs {
		key := strings.ToUpper(strings.ReplaceAll(d.name, "-", "_"))
		extra = append(extra, fmt.Sprintf("CDH_GUEST_PID_%s=%d", key, d.cmd.Process.Pid))
	}
	cmd := exec.Command(in.spec.Command[0], in.spec.Command[1:]...)
	cmd.Env = in.env(extra...)
	cmd.Dir = "/root"
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 125
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 125
	}
	if err := cmd.Start(); err != nil {
		in.mark(guestvm.KindStderr, err.Error())
		return 127
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); in.relay(stdout, guestvm.KindStdout) }()
	go func() { defer wg.Done(); in.relay(stderr, guestvm.KindStderr) }()
	wg.Wait()
	return exitCode(cmd.Wait())
}

// relay marks each line of r; a last line without its newline keeps
// that ("out-").
func (in *initProc) relay(r io.Reader, kind string) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if strings.HasSuffix(line, "\n") {
			in.mark(kind, strings.TrimSuffix(line, "\n"))
		} else if line != "" {
			if kind == guestvm.KindStdout {
				in.mark(kind+"-", line)
			} else {
				in.mark(kind, line)
			}
		}
		if err != nil {
			return
		}
	}
}

// stop sends SIGTERM to each drop-in, last started first, and reports
// each exit status; one that does not stop within 20 s is killed.
func (in *initProc) stop() {
	in.stopping.Store(true)
	for i := len(in.procs) - 1; i >= 0; i-- {
		d := in.procs[i]
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			in.logf("%s did not stop within 20 s of SIGTERM: killed", d.name)
			d.cmd.Process.Kill()
			<-d.done
		}
		in.mark(guestvm.KindDropIn, fmt.Sprintf("%s %d", d.name, d.code))
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 126
}

func waitPath(p string, limit time.Duration) (os.FileInfo, error) {
	deadline := time.Now().Add(limit)
	for {
		fi, err := os.Stat(p)
		if err == nil || time.Now().After(deadline) {
			return fi, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}

// ctx50 is kata-agent's deadline for a CDH call (agent.cdh_api_timeout).
func ctx50() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 50*time.Second)
}
