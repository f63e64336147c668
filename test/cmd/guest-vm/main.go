// Command guest-vm is scripts/guest-vm.sh: boot the guest test bed, run a
// command there once the drop-ins are up, and exit with its status.
//
//	guest-vm [--file HOST:GUEST]... [--disk NAME:SIZE]... [--initdata FILE]
//	         [--cmdline ARGS] [--mem MiB] [--timeout D] -- COMMAND...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cdh-proxy/cdh-proxy/test/guestvm"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("guest-vm.sh", flag.ContinueOnError)
	var files, disks, env list
	fs.Var(&files, "file", "HOST:GUEST: copy a host file into the guest (repeatable)")
	fs.Var(&disks, "disk", "NAME:SIZE: a blank virtio disk, /dev/NAME in the guest; SIZE in bytes or with K, M, G (repeatable)")
	fs.Var(&env, "env", "K=V: add to the environment of the drop-ins and the command (repeatable)")
	initData := fs.String("initdata", "", "initdata TOML, written where kata-agent writes it")
	cmdline := fs.String("cmdline", "", "appended to the guest kernel command line, e.g. agent.aa_kbc_params=cc_kbc::http://10.0.2.2:PORT")
	mem := fs.Int("mem", 1024, "guest memory, MiB")
	timeout := fs.Duration("timeout", 10*time.Minute, "stop (kill qemu) after this long")
	cache := fs.String("cache", "", "test-bed cache directory (default: $XDG_CACHE_HOME/cdh-proxy/guest)")
	quiet := fs.Bool("quiet", false, "no test-bed progress on stderr")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: scripts/guest-vm.sh [--file HOST:GUEST]... [--disk NAME:SIZE]... [--cmdline ARGS] [--mem MiB] -- COMMAND...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	o := guestvm.Options{Cmdline: *cmdline, MemMiB: *mem, Env: env, InitData: *initData, Command: fs.Args(), Stdout: os.Stdout, Stderr: os.Stderr}
	for _, f := range files {
		h, g, ok := strings.Cut(f, ":")
		if !ok || h == "" || g == "" {
			fmt.Fprintf(os.Stderr, "guest-vm: --file %q: want HOST:GUEST\n", f)
			return 2
		}
		o.Files = append(o.Files, guestvm.File{Host: h, Guest: g})
	}
	for _, d := range disks {
		n, s, ok := strings.Cut(d, ":")
		size, err := parseSize(s)
		if !ok || err != nil {
			fmt.Fprintf(os.Stderr, "guest-vm: --disk %q: want NAME:SIZE (e.g. trusted_store:1G)\n", d)
			return 2
		}
		o.Disks = append(o.Disks, guestvm.Disk{Name: n, Size: size})
	}
	logf := func(f string, a ...any) {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "guest-vm: "+f+"\n", a...)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest-vm:", err)
		return 1
	}
	if o.Base, err = guestvm.BuildBase(ctx, *cache, logf); err != nil {
		fmt.Fprintln(os.Stderr, "guest-vm:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "cdh-guest-project-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest-vm:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if o.Project, err = guestvm.BuildProject(ctx, root, tmp); err != nil {
		fmt.Fprintln(os.Stderr, "guest-vm:", err)
		return 1
	}
	res, err := guestvm.Run(ctx, o)
	if res != nil && len(res.DropIns) > 0 {
		var names []string
		for n := range res.DropIns {
			names = append(names, n)
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s=%d", n, res.DropIns[n]))
		}
		logf("boot %s, total %s; drop-ins stopped by SIGTERM: %s", res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond), strings.Join(parts, " "))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest-vm:", err)
		return 1
	}
	return res.Exit
}

// moduleRoot is the checkout the script runs from.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: run from the cdh-proxy checkout", dir)
		}
	}
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
