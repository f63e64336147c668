package e2e

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// azureCVM is an Azure confidential VM for the daemon: swtpm as the
// vTPM, a goroutine playing the paravisor (fresh HCL reports signed with
// go-sev-guest's test AMD chain, or TD reports quoted under the simulated
// Intel PKI), and the metadata service.
type azureCVM struct {
	para *fakehw.Paravisor
	args []string // the flags pointing cdh-proxy at this VM
}

func newAzureCVM(t *testing.T, tee string) azureCVM {
	t.Helper()
	vm, err := fakehw.NewAzureCVM(tee, true)
	if err != nil {
		t.Fatal(err) // make test installs swtpm (make test-tools)
	}
	t.Cleanup(vm.Close)
	return azureCVM{para: vm.Paravisor, args: []string{"--tpm", vm.TPM, "--azure-imds", vm.IMDS}}
}

// kbsConfig trusts the VM's simulated hardware roots.
func (c azureCVM) kbsConfig(t *testing.T) kbs.Config {
	t.Helper()
	if c.para.SNP != nil {
		return kbs.Config{SNPRoots: c.para.SNP.TrustedRoots()}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.para.TDX.RootPEM()) {
		t.Fatal("TDX root")
	}
	return kbs.Config{TDXRoots: pool}
}

// The production binary fetches a secret on both Azure CVM types, with the
// attester named and with auto-detection, in both evidence versions.
func TestAzureVTPMEndToEnd(t *testing.T) {
	for _, tee := range []string{azure.TeeSNP, azure.TeeTDX} {
		cvm := newAzureCVM(t, tee)
		k := newKBS(t, cvm.kbsConfig(t))
		for _, extra := range [][]string{
			{"--attester", tee},
			{"--attester", "auto"},
			{"--attester", tee, "--azure-evidence-version", "1"},
		} {
			t.Run(tee+"/"+strings.Join(extra, " "), func(t *testing.T) {
				before, refreshed := k.Counts().Handshakes, cvm.para.Refreshes()
				p := startInProcess(t, k, noTEE(t), nil, append(append([]string{"--kbs-url", k.URL}, cvm.args...), extra...)...)
				if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
					t.Fatalf("%d %s", r.Status, r.Body)
				}
				if got := k.Counts().Handshakes - before; got != 1 {
					t.Fatalf("handshakes %d", got)
				}
				// One attestation, one runtime-data write for the paravisor.
				if got := cvm.para.Refreshes() - refreshed; got != 1 {
					t.Fatalf("paravisor refreshed the HCL report %d times", got)
				}
				mustContain(t, p.logs.String(), `"msg":"attester selected","tee":"`+tee+`","via":"vTPM `)
			})
		}
	}
}

// Tampered evidence — quote, PCR list, nonce (a replayed quote), user-data —
// is refused by the KBS and reaches the caller as a clear 503.
func TestAzureTamperedEvidenceRejected(t *testing.T) {
	cvm := newAzureCVM(t, azure.TeeSNP)
	k := newKBS(t, cvm.kbsConfig(t))
	args := append([]string{"--kbs-url", k.URL, "--attester", azure.TeeSNP}, cvm.args...)

	// One good handshake, whose evidence is kept for the replay case.
	var recorded []byte
	k.SetFaults(kbs.Faults{Evidence: func(_ string, ev []byte) []byte { recorded = append([]byte(nil), ev...); return ev }})
	p := startInProcess(t, k, noTEE(t), nil, args...)
	if r := p.get(cocoOne); r.Status != 200 {
		t.Fatalf("untampered: %d %s", r.Status, r.Body)
	}
	p.stop()

	edit := func(f func(*evidence.Evidence)) func(string, []byte) []byte {
		return func(tee string, raw []byte) []byte {
			ev, err := evidence.ParseEvidence(tee, raw)
			if err != nil {
				t.Errorf("evidence from cdh-proxy does not parse: %v", err)
				return raw
			}
			f(ev)
			out, _ := json.Marshal(ev)
			return out
		}
	}
	for _, tc := range []struct {
		name   string
		mutate func(string, []byte) []byte
		want   string
	}{
		{"quote signature", edit(func(e *evidence.Evidence) { e.TPMQuote.Signature[7] ^= 1 }), "TPM quote signature does not verify"},
		{"quote message", edit(func(e *evidence.Evidence) { e.TPMQuote.Message[len(e.TPMQuote.Message)-3] ^= 1 }), "TPM quote signature does not verify"},
		{"PCR list", edit(func(e *evidence.Evidence) { e.TPMQuote.PCRs[0][5] ^= 1 }), "PCR values do not match"},
		{"nonce (replayed quote)", func(string, []byte) []byte { return recorded }, "nonce"},
		{"user-data", edit(func(e *evidence.Evidence) {
			i := strings.Index(string(e.HCLReport), `"user-data":"`) + len(`"user-data":"`)
			e.HCLReport[i] ^= 1 // a hex digit becomes another character
		}), "user-data does not carry the runtime data"},
		{"HCL report (claims unbound)", edit(func(e *evidence.Evidence) {
			i := strings.Index(string(e.HCLReport), `"vm-configuration":{"`) + len(`"vm-configuration":{"`)
			e.HCLReport[i] ^= 1
		}), "does not bind the HCL runtime claims"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k.SetFaults(kbs.Faults{Evidence: tc.mutate})
			p := startInProcess(t, k, noTEE(t), nil, args...)
			r := p.get(cocoOne)
			var pb problemBody
			_ = json.Unmarshal([]byte(r.Body), &pb)
			if r.Status != 503 || pb.Type != "urn:cdh-proxy:attestation-failed" || !strings.Contains(pb.Detail, tc.want) {
				t.Fatalf("got %d %s, want 503 attestation-failed mentioning %q", r.Status, r.Body, tc.want)
			}
		})
	}
}

// Init-data on Azure is measured into PCR8 at startup (sha256 only) and
// checked by the KBS; other algorithms stop startup with a clear error.
func TestAzureInitData(t *testing.T) {
	cvm := newAzureCVM(t, azure.TeeSNP)
	k := newKBS(t, cvm.kbsConfig(t))
	dir := t.TempDir()
	good := filepath.Join(dir, "initdata.toml")
	mustWrite(t, good, "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n")
	args := append([]string{"--kbs-url", k.URL, "--attester", azure.TeeSNP}, cvm.args...)

	for range 2 { // a restart finds PCR8 already bound and leaves it
		p := startInProcess(t, k, noTEE(t), nil, append(args, "--initdata", good)...)
		if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		p.stop()
	}
	// Other init-data than PCR8 holds: startup refuses (exit 1, platform
	// state); an algorithm other than sha256 is a configuration error (78).
	serve := append([]string{"serve", "--bind", "127.0.0.1:0", "--cmdline", "-", "--initdata-dir", "-", "--kbs-cert", k.CAFile}, args...)
	other := filepath.Join(dir, "other.toml")
	mustWrite(t, other, "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n")
	if _, errOut, code := runCLI(t, append(serve, "--initdata", other)...); code != 1 || !strings.Contains(errOut, "PCR8 already holds another measurement") {
		t.Fatalf("other init-data: exit %d\n%s", code, errOut)
	}
	sha384 := filepath.Join(dir, "sha384.toml")
	mustWrite(t, sha384, "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n")
	if _, errOut, code := runCLI(t, append(serve, "--initdata", sha384)...); code != 78 || !strings.Contains(errOut, "must say algorithm") {
		t.Fatalf("sha384 init-data: exit %d\n%s", code, errOut)
	}
}

// `cdh-proxy evidence` on an Azure CVM prints the evidence a KBS would get.
func TestAzureEvidenceCommand(t *testing.T) {
	cvm := newAzureCVM(t, azure.TeeTDX)
	out, errOut, code := runCLI(t, append([]string{"evidence", "--runtime-data", "hello"}, cvm.args...)...)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	ev, err := evidence.ParseEvidence(azure.TeeTDX, []byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	hcl, _ := evidence.ParseHCLReport(ev.HCLReport)
	c, _ := hcl.Claims()
	if ev.Version != 2 || c.UserData != evidence.UserDataFor([]byte("hello")) {
		t.Fatalf("version %d user-data %s", ev.Version, c.UserData)
	}
	// Without a TPM, auto names everything it looked for.
	if _, errOut, code := runCLI(t, "evidence", "--tpm", filepath.Join(t.TempDir(), "none")); code != 78 || !strings.Contains(errOut, "Azure CVM vTPM") {
		t.Fatalf("no TEE: exit %d %s", code, errOut)
	}
}

// TestDocsAzure runs docs/azure.md's shell blocks on a simulated Azure SNP
// CVM. The only liberty taken: `cdh-proxy` is a shell function adding the
// simulated vTPM's and metadata service's addresses (--tpm, --azure-imds).
func TestDocsAzure(t *testing.T) {
	blocks := shellBlocks(t, "../../docs/azure.md")
	if len(blocks) == 0 {
		t.Fatal("docs/azure.md has no shell block")
	}
	cvm := newAzureCVM(t, azure.TeeSNP)
	script := "set -euo pipefail\ncdh-proxy() { \"$CDH_PROXY\" \"$@\" " + strings.Join(cvm.args, " ") + "; }\n" + strings.Join(blocks, "\n")
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "CDH_PROXY="+proxyBin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docs/azure.md: %v\n%s%s", err, out, stderr.String())
	}
	if got := string(out); got != "\"version\":2\n1\n" {
		t.Fatalf("docs/azure.md printed %q", got)
	}
	mustContain(t, stderr.String(), `msg="attester selected" tee=az-snp-vtpm`)
}
