package guestvm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// File is a host file copied into the guest.
type File struct{ Host, Guest string }

// Disk is a blank virtio disk; the guest sees it as /dev/<Name>.
type Disk struct {
	Name string
	Size int64 // bytes
}

// Options describe one boot.
type Options struct {
	Base    *Base
	Project string // the project's initramfs part (BuildProject)
	Files   []File
	Disks   []Disk
	// InitData is a host initdata TOML, written where kata writes it.
	InitData string
	Cmdline  string // appended to the kernel command line
	MemMiB   int    // 0 → 1024
	CPUs     int    // 0 → 2
	Env      []string
	Command  []string
	Stdout   io.Writer // the command's stdout
	Stderr   io.Writer // the command's stderr, the drop-ins' logs, the kernel's and the init's messages
	// Line, when set, sees every console line (already demultiplexed: the
	// command's lines without their prefix) as it arrives; tests use it to
	// act at a point of the guest's run, without waiting on time.
	Line func(kind, text string)
}

// Result is how a boot ended.
type Result struct {
	Exit    int            // the command's exit status
	DropIns map[string]int // each drop-in's exit status after SIGTERM
	Boot    time.Duration  // from qemu's start to the drop-ins' sockets
	Total   time.Duration
}

var diskName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,19}$`)

// Run boots the guest, runs the command and returns its result. The qemu
// process is killed when ctx ends, so a timeout leaves nothing behind.
func Run(ctx context.Context, o Options) (*Result, error) {
	if len(o.Command) == 0 {
		return nil, errors.New("guest: no command")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, errors.New("guest: qemu-system-x86_64 is missing (scripts/need.sh qemu-system-x86_64 qemu-system-x86)")
	}
	tmp, err := os.MkdirTemp("", "cdh-guest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	tok := make([]byte, 8)
	rand.Read(tok)
	spec := Spec{Token: hex.EncodeToString(tok), Command: o.Command, Env: o.Env, InitData: o.InitData != ""}
	runPart := filepath.Join(tmp, "run.cpio")
	if err := writeRunPart(runPart, &spec, o.Files, o.InitData); err != nil {
		return nil, err
	}
	initrd := filepath.Join(tmp, "initrd")
	if err := concat(initrd, o.Base.Initrd, o.Project, runPart); err != nil {
		return nil, err
	}
	mem, cpus := o.MemMiB, o.CPUs
	if mem == 0 {
		mem = 1024
	}
	if cpus == 0 {
		cpus = 2
	}
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "max", "-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-kernel", o.Base.Kernel, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init " + o.Cmdline),
		// User-mode networking only: no tap or bridge; 10.0.2.2 is the
		// host's loopback.
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=",
		"-device", "virtio-rng-pci",
	}
	seen := map[string]bool{}
	for i, d := range o.Disks {
		if !diskName.MatchString(d.Name) || seen[d.Name] {
			return nil, fmt.Errorf("guest: disk name %q: want a unique name of lower-case letters, digits and _ (at most 20)", d.Name)
		}
		seen[d.Name] = true
		p := filepath.Join(tmp, "disk-"+d.Name+".img")
		f, err := os.Create(p)
		if err == nil {
			err = f.Truncate(d.Size)
			f.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("guest: disk %s: %w", d.Name, err)
		}
		id := fmt.Sprintf("disk%d", i)
		args = append(args, "-drive", "file="+p+",format=raw,if=none,id="+id+",cache=unsafe",
			"-device", "virtio-blk-pci,drive="+id+",serial="+d.Name)
	}

	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var qemuErr strings.Builder
	cmd.Stderr = &qemuErr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("guest: start qemu: %w", err)
	}
	res := &Result{Exit: -1, DropIns: map[string]int{}}
	failed := ""
	sawExit := false
	prefix := "@@" + spec.Token + ":"
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(line, prefix)
		if i < 0 {
			fmt.Fprintln(o.Stderr, line)
			o.line(KindConsole, line)
			continue
		}
		if i > 0 { // a kernel message without its newline, then ours
			fmt.Fprintln(o.Stderr, line[:i])
		}
		kind, text, _ := strings.Cut(line[i+len(prefix):], " ")
		o.line(kind, text)
		switch kind {
		case KindStdout:
			fmt.Fprintln(o.Stdout, text)
		case KindStdout + "-":
			fmt.Fprint(o.Stdout, text)
		case KindStderr:
			fmt.Fprintln(o.Stderr, text)
		case KindReady:
			res.Boot = time.Since(start)
		case KindExit:
			res.Exit, _ = strconv.Atoi(text)
			sawExit = true
		case KindDropIn:
			name, code, _ := strings.Cut(text, " ")
			res.DropIns[name], _ = strconv.Atoi(code)
		case KindFailed:
			failed = text
		}
	}
	werr := cmd.Wait()
	res.Total = time.Since(start)
	if ctx.Err() != nil {
		return res, fmt.Errorf("guest: %w after %s (qemu killed)", ctx.Err(), res.Total.Round(time.Millisecond))
	}
	if failed != "" {
		return res, fmt.Errorf("guest: %s", failed)
	}
	if !sawExit {
		return res, fmt.Errorf("guest: the guest stopped without the command's exit status (qemu: %v) %s", werr, strings.TrimSpace(qemuErr.String()))
	}
	return res, nil
}

func (o *Options) line(kind, text string) {
	if o.Line != nil {
		o.Line(kind, text)
	}
}

func writeRunPart(path string, spec *Spec, files []File, initData string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	a := newArchive(f)
	for _, fl := range files {
		if !filepath.IsAbs(fl.Guest) || filepath.Clean(fl.Guest) != fl.Guest {
			return fmt.Errorf("guest: --file %s:%s: the guest path must be absolute and clean", fl.Host, fl.Guest)
		}
		if _, err := os.Stat(fl.Host); err != nil {
			return fmt.Errorf("guest: --file: %w", err)
		}
		a.copyFile(StageDir+fl.Guest, fl.Host)
		spec.Files = append(spec.Files, fl.Guest)
	}
	if initData != "" {
		a.copyFile(InitDataStage, initData)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	a.file(SpecPath, 0o600, b)
	if err := a.close(); err != nil {
		return err
	}
	return f.Close()
}

func concat(dst string, parts ...string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return out.Close()
}
