package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cdh-proxy/cdh-proxy/test/guestvm"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// P7: the drop-in trio in a real guest kernel (the guest test bed), as
// kata-agent starts it: attestations at start and after the first secret,
// and the trio's memory (VmRSS and PSS summed over the three processes,
// from /proc/<pid>/smaps_rollup in the guest, after the first secret).
func (b *bench) p7() error { return inGuest("P7", b.p7Run) }

func (b *bench) p7Run(ctx context.Context, o guestvm.Options, dir string) error {
	srv, ts, err := kbsServer(func(s kbs.TreeStore) error { return s.Write("default", "akv", "coco_one", []byte("a secret")) })
	if err != nil {
		return err
	}
	defer ts.Close()
	port := ts.URL[strings.LastIndex(ts.URL, ":")+1:]
	// The pause lets start-up attestations, if any, reach the KBS before
	// the first count: this is a measurement, not a test.
	script := `sleep 3; echo count-start
wget -qO- http://127.0.0.1:8006/cdh/resource/default/akv/coco_one >/dev/null; echo count-first
` + guestvm.MemoryScript
	f := dir + "/p7.sh"
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		return err
	}
	var atStart, afterFirst uint64
	var lines []string
	o.Cmdline = "agent.aa_kbc_params=cc_kbc::http://10.0.2.2:" + port
	o.Files, o.Command = []guestvm.File{{Host: f, Guest: "/root/p7.sh"}}, []string{"sh", "/root/p7.sh"}
	o.Stdout, o.Stderr = io.Discard, io.Discard
	o.Line = func(kind, text string) {
		if kind != guestvm.KindStdout {
			return
		}
		switch {
		case text == "count-start":
			atStart = srv.Counts().Attest
		case text == "count-first":
			afterFirst = srv.Counts().Attest
		default:
			lines = append(lines, text)
		}
	}
	res, err := guestvm.Run(ctx, o)
	if err != nil {
		return err
	}
	per := guestvm.ParseMemory(lines)
	if res.Exit != 0 || len(per) != 3 {
		return fmt.Errorf("the guest script exited %d with the memory of %d drop-ins", res.Exit, len(per))
	}
	mem := guestvm.Sum(per)
	mib := func(kb int) string { return fmt.Sprintf("%.1f", float64(kb)/1024) }
	b.printf("## P7 — drop-in trio in a guest\n\n")
	b.printf("The guest test bed (test/guestvm: Debian's %s kernel under QEMU, software emulation, 2 vCPUs, 1 GiB) with the three drop-in names started as kata-agent starts them, KBS from the kernel command line, no initdata. Attestations counted by the test KBS once the drop-ins are up (plus 3 s) and after the first `curl` of a secret; memory summed over the three processes from `/proc/<pid>/smaps_rollup` in the guest after it. The binary sits in the initramfs, so its pages count as shmem there (the file column). Boot to drop-ins ready: %s; whole run: %s.\n\n",
		o.Base.Release, res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	b.printf("| | attestations at start / after the first secret | VmRSS | PSS (anon / file) |\n|---|---|---|---|\n")
	b.printf("| guest-components v0.21 (issue 20's measurement with a real Trustee; not re-run here) | 0 / 1 | 39.3 MiB | 33.7 MiB (6.0 / 27.7) |\n")
	b.printf("| cdh-proxy trio before issue 20 (issue 20's measurement) | 2 / 2 | 67.0 MiB | 33.3 MiB (17.9 / 15.4) |\n")
	// Measured by this part, copied onto each commit's checkout.
	b.printf("| cdh-proxy trio before issue 20, this test bed (commit 2b1df85) | 2 / 2 | 59.3 MiB | 33.7 MiB (19.8 / 13.9) |\n")
	b.printf("| cdh-proxy trio with the attestation fix, before the huge-page fix (commit 24317bb) | 0 / 1 | 56.8 MiB | 31.8 MiB (17.9 / 13.9) |\n")
	b.printf("| **cdh-proxy trio, this run** | %d / %d | %s MiB | %s MiB (%s / %s) |\n\n", atStart, afterFirst,
		mib(mem.Rss), mib(mem.Pss), mib(mem.Anon), mib(mem.File))
	b.guestPSS, b.guestAttest = float64(mem.Pss)/1024, afterFirst
	return nil
}

// inGuest runs a guest part: the test bed built (or reused), its options
// with the image filled in, a scratch directory for the part's files, and
// ten minutes at most. Errors are prefixed with the part's name.
func inGuest(part string, run func(ctx context.Context, o guestvm.Options, dir string) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "bench-guest")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	base, err := guestvm.BuildBase(ctx, "", func(string, ...any) {})
	if err != nil {
		return fmt.Errorf("%s: %w", part, err)
	}
	project, err := guestvm.BuildProject(ctx, ".", dir)
	if err != nil {
		return fmt.Errorf("%s: %w", part, err)
	}
	if err := run(ctx, guestvm.Options{Base: base, Project: project}, dir); err != nil {
		return fmt.Errorf("%s: %w", part, err)
	}
	return nil
}

// P8: SecureMount's key derivation per volume, in the guest: luksFormat
// and open of a 64 MiB volume with the random key's PBKDF2 at
// cryptsetup's floor (what cdh-proxy uses for a random key) and with
// cryptsetup's default Argon2id (what it keeps for a key from outside):
// wall time and the tool's peak RSS (busybox time -v).
func (b *bench) p8() error { return inGuest("P8", b.p8Run) }

func (b *bench) p8Run(ctx context.Context, o guestvm.Options, dir string) error {
	script := `head -c 4096 /dev/urandom > /root/k
for mode in pbkdf2 argon2id; do
	opts="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"; [ $mode = argon2id ] && opts=""
	for op in format open; do
		if [ $op = format ]; then
			time -v cryptsetup --batch-mode luksFormat --type luks2 --cipher aes-xts-plain64 --key-size 512 --sector-size 4096 --header /run/h.$mode $opts --key-file /root/k /dev/vol 2>/tmp/t >/dev/null
		else
			time -v cryptsetup open --type luks2 --header /run/h.$mode --key-file /root/k /dev/vol v$mode 2>/tmp/t >/dev/null
		fi
		awk -v m=$mode -v o=$op -F': ' '/Elapsed/ {split($2, a, "m "); sub("s", "", a[2]); t = a[1]*60 + a[2]} /Maximum resident/ {r = $2} END {print "kdf", m, o, t, r}' /tmp/t
	done
	cryptsetup close v$mode
done
cryptsetup luksDump /run/h.argon2id | awk '/Memory:/ {print "argon2-memory", $2} /Time cost:/ {print "argon2-time-cost", $3}'
`
	f := dir + "/p8.sh"
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		return err
	}
	rows := map[string][2]string{}
	var argonMem, argonCost string
	o.Cmdline = "agent.aa_kbc_params=cc_kbc::http://10.0.2.2:1"
	o.Disks = []guestvm.Disk{{Name: "vol", Size: 64 << 20}}
	o.Files, o.Command = []guestvm.File{{Host: f, Guest: "/root/p8.sh"}}, []string{"sh", "/root/p8.sh"}
	o.Stdout, o.Stderr = io.Discard, io.Discard
	o.Line = func(kind, text string) {
		if kind != guestvm.KindStdout {
			return
		}
		fl := strings.Fields(text)
		switch {
		case len(fl) == 5 && fl[0] == "kdf":
			rows[fl[1]+" "+fl[2]] = [2]string{fl[3], fl[4]}
		case len(fl) == 2 && fl[0] == "argon2-memory":
			argonMem = fl[1]
		case len(fl) == 2 && fl[0] == "argon2-time-cost":
			argonCost = fl[1]
		}
	}
	res, err := guestvm.Run(ctx, o)
	if err != nil {
		return err
	}
	if res.Exit != 0 || len(rows) != 4 {
		return fmt.Errorf("the guest script exited %d with %d of 4 readings", res.Exit, len(rows))
	}
	b.printf("## P8 — SecureMount key derivation per volume\n\n")
	b.printf("In the guest test bed (software emulation: the times are the emulator's, the ratio and the memory are what matter), a 64 MiB volume, LUKS2 aes-xts-plain64 with a detached header; `time -v` of cryptsetup (wall time, peak RSS). cryptsetup benchmarks Argon2id to its 2 s target on the machine it runs on: here it chose %s KiB and time cost %s; on hardware it takes up to 1 GiB, at most half the guest's memory, per volume.\n\n", argonMem, argonCost)
	b.printf("| PBKDF | luksFormat | open | peak RSS (format / open) | used for |\n|---|---|---|---|---|\n")
	for _, m := range []struct{ name, use string }{
		{"pbkdf2", "a random 4096-byte key (no `key` option): full entropy, stretching buys nothing; PBKDF2 at cryptsetup's floor, 1000 iterations"},
		{"argon2id", "a key from outside (`key=kbs:///…`, `sealed.…`, `file://…`): cryptsetup's defaults, as upstream"},
	} {
		f, o := rows[m.name+" format"], rows[m.name+" open"]
		b.printf("| %s | %s s | %s s | %s / %s KiB | %s |\n", m.name, f[0], o[0], f[1], o[1], m.use)
	}
	b.printf("\n")
	return nil
}
