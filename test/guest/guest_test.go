// Package guest runs the drop-ins in a real Linux guest (test/guestvm):
// Debian's kernel under QEMU, started by a kata-agent stand-in exactly as
// kata-agent starts them, reaching the host's test KBS and registry through
// QEMU's user-mode network (10.0.2.2 is the host's loopback). Each test is
// one boot; the checks of a boot share it, since a boot under software
// emulation costs seconds.
package guest

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cdh-proxy/cdh-proxy/internal/imagetest"
	"github.com/cdh-proxy/cdh-proxy/sealed"
	"github.com/cdh-proxy/cdh-proxy/test/guestvm"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
	"github.com/cdh-proxy/cdh-proxy/test/proc"
)

// The guest sees the host's loopback here.
const hostFromGuest = "10.0.2.2"

var bed = sync.OnceValues(func() (*guestvm.Options, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	base, err := guestvm.BuildBase(ctx, os.Getenv("CDH_GUEST_CACHE"), func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cdh-guest-test-")
	if err != nil {
		return nil, err
	}
	project, err := guestvm.BuildProject(ctx, "../..", dir)
	if err != nil {
		return nil, err
	}
	return &guestvm.Options{Base: base, Project: project}, nil
})

// boot runs script in the guest with sh, stdout and stderr (the drop-ins'
// logs, the kernel's and the init's lines) captured.
func boot(t *testing.T, o guestvm.Options, script string) (res *guestvm.Result, stdout, stderr string) {
	t.Helper()
	b, err := bed()
	if err != nil {
		t.Fatalf("guest test bed: %v", err)
	}
	o.Base, o.Project = b.Base, b.Project
	// kata's own option, raised from its 6 s: CI shares two cores with
	// other work, and emulation may start a drop-in slowly there.
	o.Cmdline += " agent.launch_process_timeout=120"
	f := filepath.Join(t.TempDir(), "check.sh")
	prelude := "set -e\n"
	// The script's commands on stderr, for debugging: the secrets it
	// handles then show there, and the no-secrets check fails.
	if os.Getenv("CDH_GUEST_TRACE") != "" {
		prelude += "PS4='+ $(cut -d\" \" -f1 /proc/uptime) '\nset -x\n"
	}
	if err := os.WriteFile(f, []byte(prelude+script), 0o755); err != nil {
		t.Fatal(err)
	}
	o.Files = append(o.Files, guestvm.File{Host: f, Guest: "/root/check.sh"})
	o.Command = []string{"sh", "/root/check.sh"}
	var out, errs proc.Buffer
	o.Stdout, o.Stderr = &out, &errs
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err = guestvm.Run(ctx, o)
	t.Logf("guest stdout:\n%s", out.String())
	if os.Getenv("CDH_GUEST_TRACE") != "" {
		t.Logf("guest stderr and logs:\n%s", errs.String())
	}
	if err != nil {
		t.Fatalf("guest: %v\n%s", err, errs.String())
	}
	t.Logf("boot to drop-ins ready %s, whole run %s", res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	if res.Exit != 0 {
		t.Fatalf("guest check exited %d; stderr and logs:\n%s", res.Exit, errs.String())
	}
	// Stopping is clean: each drop-in exits 0 on SIGTERM.
	for _, n := range []string{"attestation-agent", "confidential-data-hub", "api-server-rest"} {
		if code, ok := res.DropIns[n]; !ok || code != 0 {
			t.Errorf("%s: exit status %d after SIGTERM (reported: %v), want 0\n%s", n, code, ok, errs.String())
		}
	}
	return res, out.String(), errs.String()
}

// testKBS is a strict test KBS on the host's loopback, and its URL as the
// guest reaches it.
type testKBS struct {
	*kbs.Server
	Store      kbs.Store
	GuestURL   string
	sealedFile string // a sealed secret for the file-secret resource
}

func newKBS(t *testing.T) *testKBS {
	t.Helper()
	store := kbs.LocalFsStore{Dir: t.TempDir()}
	for _, r := range []struct{ typ, tag, v string }{
		{"akv", "coco_one", "a secret"}, {"akv", "coco_two", "another secret"}, {"sealed-secret", "file-secret", "-----tls key-----"},
	} {
		if err := store.Write("default", r.typ, r.tag, []byte(r.v)); err != nil {
			t.Fatal(err)
		}
	}
	key, err := kbs.WriteSealingKey(store)
	if err != nil {
		t.Fatal(err)
	}
	sealedFile, err := sealed.Seal(sealed.Vault("kbs:///default/sealed-secret/file-secret"), kbs.SealingKeyID, key)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := kbs.New(kbs.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	port := ts.URL[strings.LastIndex(ts.URL, ":")+1:]
	return &testKBS{Server: srv, Store: store, GuestURL: "http://" + hostFromGuest + ":" + port, sealedFile: sealedFile}
}

// noSecrets fails when any of the values appears in the guest's logs.
func noSecrets(t *testing.T, logs string, values ...string) {
	t.Helper()
	if !strings.Contains(logs, "[confidential-data-hub] ") || !strings.Contains(logs, "[attestation-agent] ") || !strings.Contains(logs, "[api-server-rest] ") {
		t.Fatalf("the drop-ins' logs are missing from the guest's output:\n%s", logs)
	}
	for _, v := range values {
		if strings.Contains(logs, v) {
			t.Errorf("a secret value (%d bytes) appears in the guest's logs", len(v))
		}
	}
}

// A workload and kata-agent in a guest, with the KBS from the kernel
// command line and no initdata: the workload's curl, kata's GetResource
// and UnsealSecret, one attestation for all of them, nothing secret in
// the logs, a clean stop. The drop-ins' memory is read in the guest.
func TestGuestResources(t *testing.T) {
	k := newKBS(t)
	script := `
echo "http: $(wget -qO- http://127.0.0.1:8006/cdh/resource/default/akv/coco_one)"
echo "ttrpc: $(kata-ttrpc get-resource kbs:///default/akv/coco_two)"
echo "unseal: $(kata-ttrpc unseal-secret "$SEALED")"
# A missing resource is NotFound on both faces, not a hang.
code=$(wget -S -qO- http://127.0.0.1:8006/cdh/resource/default/akv/nope 2>&1 | sed -n 's/^ *HTTP\/1.1 \([0-9]*\).*/\1/p' | head -1)
echo "missing: http ${code:-none}"
kata-ttrpc get-resource kbs:///default/akv/nope 2>&1 | sed 's/^/missing: /' || true
for n in ATTESTATION_AGENT CONFIDENTIAL_DATA_HUB API_SERVER_REST; do
	eval pid=\$CDH_GUEST_PID_$n
	awk -v n=$n '/^THP_enabled:/ {printf "thp %s %s\n", n, $2}' /proc/$pid/status
done
echo "thp-mode: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
` + guestvm.MemoryScript
	res, out, logs := boot(t, guestvm.Options{
		Cmdline: "agent.aa_kbc_params=cc_kbc::" + k.GuestURL,
		Env:     []string{"SEALED=" + k.sealedFile},
	}, script)
	for _, want := range []string{
		"http: a secret\n", "ttrpc: another secret\n", "unseal: -----tls key-----\n",
		"missing: http 404\n", "missing: kata-ttrpc get-resource: NotFound",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output lacks %q", want)
		}
	}
	if !strings.Contains(logs, "kbs="+k.GuestURL+" kbs_url_from=\"/proc/cmdline agent.aa_kbc_params\"") {
		t.Errorf("the drop-ins did not take the KBS from the kernel command line:\n%s", logs)
	}
	// The AA process never attested (nobody asked it for a token); the
	// CDH process attested once for all of its requests.
	if n := k.Counts().Attest; n != 1 {
		t.Errorf("%d attestations in the guest's life, want 1", n)
	}
	noSecrets(t, logs, "a secret", "another secret", "-----tls key-----")
	// Debian's guest kernel runs THP "always"; each drop-in restarted
	// itself with huge pages off (cli.noHugePages).
	if !strings.Contains(out, "thp-mode: [always]") {
		t.Errorf("the guest kernel's THP mode is not \"always\"; the huge-page check means nothing")
	}
	for _, n := range []string{"ATTESTATION_AGENT", "CONFIDENTIAL_DATA_HUB", "API_SERVER_REST"} {
		if !strings.Contains(out, "thp "+n+" 0\n") {
			t.Errorf("%s runs with transparent huge pages on", n)
		}
	}
	mem := guestvm.ParseMemory(strings.Split(out, "\n"))
	if len(mem) != 3 {
		t.Fatalf("memory of %d drop-ins read, want 3", len(mem))
	}
	for name, m := range mem {
		t.Logf("%-22s Rss %5d kB  Pss %5d kB (anon %5d, file %5d)", name, m.Rss, m.Pss, m.Anon, m.File)
	}
	s := guestvm.Sum(mem)
	t.Logf("trio: VmRSS %.1f MiB, PSS %.1f MiB (anon %.1f / file %.1f); boot %s", mib(s.Rss), mib(s.Pss), mib(s.Anon), mib(s.File), res.Boot.Round(time.Millisecond))
}

func mib(kb int) float64 { return float64(kb) / 1024 }

// kata's initdata in a guest: cdh.toml (the KBS, [[credentials]], the
// registry, signature policy and work_dir for guest pull) and aa.toml (the
// AA's own KBS) are honoured. SecureMount sets up kata's trusted image
// store on /dev/trusted_store, and an image from the host's registry is
// pulled with its layers there and its rootfs an overlay in a kata bundle
// on tmpfs. SecureMount's other cases run on their own disks: an ephemeral
// volume with dm-integrity, a failure rolled back and retried, existing
// volumes opened with a KBS key and a file key, a small disk, kata's older
// dialect. The AA attests only when asked for a token.
func TestGuestInitDataSecureMountAndImagePull(t *testing.T) {
	k, aaKBS := newKBS(t), newKBS(t)
	const diskKey = "disk passphrase from the KBS"
	if err := k.Store.Write("default", "disk", "key", []byte(diskKey)); err != nil {
		t.Fatal(err)
	}
	reg := imagetest.NewRegistry(t, false)
	port := reg.Host[strings.LastIndex(reg.Host, ":")+1:]
	regGuest := hostFromGuest + ":" + port
	reg.Push(t, "app:v1", imagetest.Image(t,
		imagetest.Layer(t, imagetest.Entry{Name: "etc/motd", Body: "base layer\n"}, imagetest.Entry{Name: "bin/hello", Body: "from the guest pull\n"}),
		imagetest.Layer(t, imagetest.Entry{Name: "etc/motd", Body: "top layer wins\n"})))
	reg.Push(t, "denied/app:v1", imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "x", Body: "x"})))
	// 500 and 128 layers, past what one page of absolute overlay options
	// holds, on a kernel without fsconfig's lowerdir+ (6.1). The 128 are
	// the 500's first: the second pull downloads nothing.
	many := make([]v1.Layer, 500)
	for i := range many {
		many[i] = imagetest.Layer(t, imagetest.Entry{Name: fmt.Sprintf("layers/%d", i), Body: "x"}, imagetest.Entry{Name: "every", Body: fmt.Sprintf("layer %d\n", i)})
	}
	reg.Push(t, "many:500", imagetest.Image(t, many...))
	reg.Push(t, "many:128", imagetest.Image(t, many[:128]...))
	policy := fmt.Sprintf(`{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"%s/denied":[{"type":"reject"}]}}}`, regGuest)
	cdhToml := fmt.Sprintf(`socket = "unix:///run/confidential-containers/cdh.sock"
[kbc]
name = "cc_kbc"
url = "%s"
[[credentials]]
resource_uri = "kbs:///default/akv/coco_two"
path = "/run/confidential-containers/cdh/kbs/cred"
[image]
work_dir = "/run/kata-containers/image"
image_security_policy = '%s'
[[image.registry_config.registry]]
location = "%s"
insecure = true
`, k.GuestURL, policy, regGuest)
	// The event log on, as operators turn it on through initdata: the
	// guest has no TEE (the sample attester), so measurements answer
	// NOT_SUPPORTED, and pulls go on.
	aaToml := fmt.Sprintf("[token_configs.kbs]\nurl = %q\n[eventlog_config]\nenable_eventlog = true\n", aaKBS.GuestURL)
	initdata := filepath.Join(t.TempDir(), "initdata.toml")
	if err := os.WriteFile(initdata, []byte(fmt.Sprintf("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n%s'''\n\"cdh.toml\" = '''\n%s'''\n", aaToml, cdhToml)), 0o644); err != nil {
		t.Fatal(err)
	}
	beforeToken := ^uint64(0)
	script := fmt.Sprintf(`
ls /run/confidential-containers/initdata
echo "credential: $(cat /run/confidential-containers/cdh/kbs/cred)"
devid() { echo $((0x$(stat -L -c %%t $1))):$((0x$(stat -L -c %%T $1))); }
volumes() { echo "mappers=$(ls /dev/mapper | grep -vc control) headers=$(ls /run/confidential-containers/cdh/luks-headers | wc -l)"; }

# kata's trusted image store (kata >= 3.28's map), and kata's repeat of it
# for the next container.
mkdir -p /run/kata-containers/image/
store() { kata-ttrpc secure-mount block-device /run/kata-containers/image/ deviceId=$(devid /dev/trusted_store) sourceType=empty targetType=fileSystem filesystemType=ext4 "mkfsOpts=-E lazy_journal_init" encryptionType=luks2 dataIntegrity=false; }
store
awk '$2 == "/run/kata-containers/image" {print "store-mount:", substr($1, 1, 12), $3, $4}' /proc/mounts
echo kept > /run/kata-containers/image/kept
store && echo "store-repeat: $(cat /run/kata-containers/image/kept)"

# An ephemeral volume (kata's map) with dm-integrity.
mkdir -p /run/kata-containers/eph
kata-ttrpc secure-mount block-device /run/kata-containers/eph deviceId=$(devid /dev/eph) sourceType=empty targetType=fileSystem filesystemType=ext4 "mkfsOpts=-O ^has_journal -m 0 -i 163840 -I 128" encryptionType=luks2 dataIntegrity=true
eph=$(awk '$2 == "/run/kata-containers/eph" {print $1}' /proc/mounts)
echo "eph-mount: $(awk '$2 == "/run/kata-containers/eph" {print $3, $4}' /proc/mounts)"
echo "eph-dif: $(integritysetup status ${eph#/dev/mapper/}_dif | grep -o 'journal: .*')"
cryptsetup luksDump /run/confidential-containers/cdh/luks-headers/$(printf /dev/%%s $(readlink /dev/eph | sed 's,.*/,,') | base64 | tr '+/' '-_' | tr -d '=').header | awk -F: '/^[ \t]*(PBKDF|Cipher|Cipher key|integrity|sector):/ {gsub(/^[ \t]+|[ \t]+$/, "", $1); gsub(/^[ \t]+/, "", $2); print "eph-luks:", $1, $2}'
cryptsetup isLuks /dev/eph || echo "eph-device: no LUKS header on the disk"
echo "eph-root: $(stat -c '%%U %%a' /run/kata-containers/eph) $(ls /run/kata-containers/eph)"
for i in 1 2 3 4; do dd if=/dev/urandom of=/run/kata-containers/eph/f$i bs=1M count=2 2>/dev/null & done; wait
sha256sum /run/kata-containers/eph/f* > /root/sums; sync; echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /root/sums >/dev/null && echo "eph-data: read back"

# A failure rolls back everything; the corrected retry succeeds.
before=$(volumes)
mkdir -p /run/vol-bad
kata-ttrpc secure-mount block-device /run/vol-bad deviceId=$(devid /dev/bad) sourceType=empty targetType=fileSystem "mkfsOpts=-b 999" encryptionType=luks2 dataIntegrity=true 2>&1 | sed 's/^/bad: /' || true
[ "$(volumes)" = "$before" ] && ! grep -q /run/vol-bad /proc/mounts && echo "bad-rollback: nothing left"
kata-ttrpc secure-mount block-device /run/vol-bad deviceId=$(devid /dev/bad) sourceType=empty targetType=fileSystem encryptionType=luks2 dataIntegrity=true && echo "bad-retry: $(awk '$2 == "/run/vol-bad" {print $3}' /proc/mounts)"

# An existing volume (its header on the disk), key from the KBS.
printf %%s "$DISK_KEY" > /root/prep-key
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /root/prep-key /dev/enc
cryptsetup open --key-file /root/prep-key /dev/enc prep
mkfs.ext4 -q /dev/mapper/prep && mkdir -p /mnt/p && mount /dev/mapper/prep /mnt/p && echo from-the-host > /mnt/p/marker && umount /mnt/p
cryptsetup close prep; rm /root/prep-key
mkdir -p /run/vol-enc
kata-ttrpc secure-mount block-device /run/vol-enc devicePath=/dev/enc sourceType=encrypted targetType=fileSystem encryptionType=luks2 key=kbs:///default/disk/key
echo "enc-marker: $(cat /run/vol-enc/marker)"

# An existing volume linked as a device, file key, named mapper.
printf 'a file key' > /root/link-key
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /root/link-key /dev/link
kata-ttrpc secure-mount block-device /run/vol-link devicePath=/dev/link sourceType=encrypted targetType=device encryptionType=luks2 key=file:///root/link-key mapperName=m1
echo "link: $(readlink /run/vol-link) $(stat -L -c %%F /run/vol-link)"

# 64 MiB with integrity: one block group, no superblock backups.
mkdir -p /run/vol-small
kata-ttrpc secure-mount block-device /run/vol-small deviceId=$(devid /dev/small) sourceType=empty targetType=fileSystem encryptionType=luks2 dataIntegrity=true && echo "small: $(awk '$2 == "/run/vol-small" {print $3}' /proc/mounts)"

# kata 3.8-3.27's dialect.
kata-ttrpc secure-mount BlockDevice /run/vol-legacy deviceId=$(devid /dev/legacy) encryptType=LUKS dataIntegrity=false && echo "legacy: $(awk '$2 == "/run/vol-legacy" {print $3}' /proc/mounts)"

echo "aead-errors: $(dmesg | grep -ci 'AEAD\|I/O error')"
# No key in a file on the guest's own file systems (not the volumes).
echo "key-files: $(find /run /tmp /var /root -xdev -type f -size -1024k | xargs grep -l "$DISK_KEY" | wc -l) of $(find /run /tmp /var /root -xdev -type f | wc -l)"

bundle=/run/kata-containers/c0ffee
mkdir -p $bundle
echo "pulled: $(kata-ttrpc pull-image %[1]s/app:v1 $bundle)"
echo "motd: $(cat $bundle/rootfs/etc/motd)"
echo "hello: $(cat $bundle/rootfs/bin/hello)"
[ "$(stat -c %%d /run/kata-containers/image/layers)" = "$(stat -c %%d /run/kata-containers/image)" ] && [ "$(stat -c %%d /run/kata-containers/image)" != "$(stat -c %%d /run)" ] && echo "layers: on the trusted store"
awk '$2 == "/run/kata-containers/c0ffee/rootfs" {print "rootfs-mount:", $3}' /proc/mounts
awk '$2 == "/run" {print "run-mount:", $3}' /proc/mounts
for n in 500 128; do
	many=/run/kata-containers/many$n
	mkdir -p $many
	kata-ttrpc pull-image %[1]s/many:$n $many >/dev/null
	echo "many: $(ls $many/rootfs/layers | wc -l) layers, every from $(cat $many/rootfs/every)"
done
mkdir /run/kata-containers/denied
kata-ttrpc pull-image %[1]s/denied/app:v1 /run/kata-containers/denied 2>&1 | sed 's/^/denied: /' || true
[ -e /run/attestation-agent/eventlog ] || echo "aael: none"
echo before-token
echo "token: $(kata-ttrpc get-token | wc -c)"
`, regGuest)
	_, out, logs := boot(t, guestvm.Options{
		InitData: initdata,
		Env:      []string{"DISK_KEY=" + diskKey},
		Disks: []guestvm.Disk{{Name: "trusted_store", Size: 512 << 20}, {Name: "eph", Size: 256 << 20}, {Name: "bad", Size: 128 << 20},
			{Name: "enc", Size: 128 << 20}, {Name: "link", Size: 64 << 20}, {Name: "small", Size: 64 << 20}, {Name: "legacy", Size: 128 << 20}},
		Cmdline: "agent.aa_kbc_params=cc_kbc::http://" + hostFromGuest + ":1", // initdata's configuration wins
		Line: func(kind, text string) {
			if kind == guestvm.KindStdout && text == "before-token" {
				beforeToken = aaKBS.Counts().Attest
			}
		},
	}, script)
	for _, want := range []string{
		"aa.toml\ncdh.toml\ninitdata.toml\n",
		"credential: another secret\n",
		"pulled: sha256:", "motd: top layer wins\n", "hello: from the guest pull\n",
		"rootfs-mount: overlay\n", "run-mount: tmpfs\n", "many: 500 layers, every from layer 499\n", "many: 128 layers, every from layer 127\n",
		"denied: kata-ttrpc pull-image: PermissionDenied",
		"store-mount: /dev/mapper/ ext4 rw,noatime\n", "store-repeat: kept\n", "layers: on the trusted store\n",
		"eph-mount: ext4 rw,noatime\n", "eph-dif: journal: not active\n",
		"eph-luks: PBKDF pbkdf2\n", "eph-luks: Cipher aes-xts-plain64\n", "eph-luks: Cipher key 512 bits\n", "eph-luks: integrity hmac(sha256)\n", "eph-luks: sector 4096 [bytes]\n",
		"eph-device: no LUKS header on the disk\n", "eph-root: root 755 lost+found\n", "eph-data: read back\n",
		"bad: kata-ttrpc secure-mount: Internal: SecureMount: mkfs.ext4", "bad-rollback: nothing left\n", "bad-retry: ext4\n",
		"enc-marker: from-the-host\n", "link: /dev/mapper/m1 block special file\n", "small: ext4\n", "legacy: ext4\n",
		"aead-errors: 0\n", "key-files: 0 of ", "aael: none\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output lacks %q", want)
		}
	}
	if strings.Contains(out, "token: 0\n") || !strings.Contains(out, "token: ") {
		t.Errorf("no token from the AA")
	}
	// The AA's KBS (aa.toml) saw no attestation until the token was asked
	// for, then one; the CDH's KBS (cdh.toml) one for the credential and
	// the pull.
	if beforeToken != 0 {
		t.Errorf("the AA attested %d times before anyone asked it for a token, want 0", beforeToken)
	}
	if n := aaKBS.Counts().Attest; n != 1 {
		t.Errorf("the AA's KBS saw %d attestations, want 1", n)
	}
	if n := k.Counts().Attest; n != 1 {
		t.Errorf("the CDH's KBS saw %d attestations, want 1", n)
	}
	for _, want := range []string{"runtime measurements are not supported here", `msg="image pull not measured" component=cdh-ttrpc`, "result=NOT_SUPPORTED"} {
		if !strings.Contains(logs, want) {
			t.Errorf("drop-in logs lack %q", want)
		}
	}
	noSecrets(t, logs, "another secret", diskKey, "a file key")
}

// A run stopped from outside (the script's --timeout, Ctrl-C, a test's
// deadline) kills qemu at once: Run returns the context's error while the
// guest's command would still run for ten minutes.
func TestGuestStoppedRunKillsQEMU(t *testing.T) {
	b, err := bed()
	if err != nil {
		t.Fatalf("guest test bed: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs proc.Buffer
	o := guestvm.Options{
		Base: b.Base, Project: b.Project, Cmdline: "agent.aa_kbc_params=cc_kbc::http://" + hostFromGuest + ":1",
		Command: []string{"sleep", "600"}, Stdout: &logs, Stderr: &logs,
		// Stopped as soon as the guest's init speaks: the kill does not
		// depend on how far the guest got, and the boot costs less.
		Line: func(kind, text string) {
			if kind == guestvm.KindConsole && strings.HasPrefix(text, "guest-init: ") {
				cancel()
			}
		},
	}
	_, err = guestvm.Run(ctx, o)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "qemu killed") {
		t.Fatalf("Run: %v, want the context's error and qemu killed\n%s", err, logs.String())
	}
}
