package e2e

import (
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cdh-proxy/cdh-proxy/internal/daemon"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// initdata is a valid initdata TOML; its SHA-384 goes into MRCONFIGID/HOSTDATA.
const initdata = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n"

type teeCase struct {
	tee string
	// untrusted is a KBS config whose roots do not cover the simulator.
	untrusted func(t *testing.T) kbs.Config
	// setup saves the simulator into dir and returns the KBS config that trusts it.
	setup func(t *testing.T, dir string, mod func(any)) kbs.Config
}

func teeCases() []teeCase {
	return []teeCase{
		{tee: "tdx", untrusted: func(t *testing.T) kbs.Config {
			other, err := fakehw.NewTDX() // a fresh throwaway PKI
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(other.RootPEM())
			return kbs.Config{TDXRoots: roots}
		}, setup: func(t *testing.T, dir string, mod func(any)) kbs.Config {
			hw, err := fakehw.NewTDX()
			if err != nil {
				t.Fatal(err)
			}
			mod(hw)
			if err := hw.Save(dir); err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(hw.RootPEM())
			return kbs.Config{TDXRoots: roots}
		}},
		{tee: "snp", untrusted: func(t *testing.T) kbs.Config {
			// go-sev-guest's test chains share fixed keys, so "another
			// platform" means another product line: no trusted Genoa ARK.
			other, err := fakehw.NewSNP("Milan")
			if err != nil {
				t.Fatal(err)
			}
			return kbs.Config{SNPRoots: other.TrustedRoots()}
		}, setup: func(t *testing.T, dir string, mod func(any)) kbs.Config {
			hw, err := fakehw.NewSNP("Genoa")
			if err != nil {
				t.Fatal(err)
			}
			mod(hw)
			if err := hw.Save(dir); err != nil {
				t.Fatal(err)
			}
			return kbs.Config{SNPRoots: hw.TrustedRoots()}
		}},
	}
}

// fakeHW is the simulator saved in dir as the daemon's hardware, as
// test/cmd/cdh-proxy-fakehw builds it for a child process.
func fakeHW(t *testing.T, tee, dir string) daemon.Hardware {
	t.Helper()
	fs, err := fakehw.LoadConfigFS(tee, dir)
	if err != nil {
		t.Fatal(err)
	}
	hw := noTEE(t)
	hw.TSM = fs
	return hw
}

func fakeEnv(tee, dir string) []string {
	return []string{"CDH_PROXY_FAKEHW=" + tee, "CDH_PROXY_FAKEHW_DIR=" + dir}
}

// Real binary, real configfs-tsm code path over simulated hardware, real
// signature checks in the test KBS.
func TestTEEAttestersEndToEnd(t *testing.T) {
	for _, tc := range teeCases() {
		for _, flag := range []string{tc.tee, "auto"} {
			t.Run(tc.tee+"/--attester "+flag, func(t *testing.T) {
				dir := t.TempDir()
				k := newKBS(t, tc.setup(t, dir, func(any) {}))
				p := startInProcess(t, k, fakeHW(t, tc.tee, dir), nil, "--kbs-url", k.URL, "--attester", flag)
				if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
					t.Fatalf("%d %s", r.Status, r.Body)
				}
				if c := k.Counts(); c.Handshakes != 1 {
					t.Fatalf("handshakes %d", c.Handshakes)
				}
				mustContain(t, p.logs.String(), `"msg":"attester selected","tee":"`+tc.tee+`","via":"configfs-tsm"`)
			})
		}
	}
}

func TestTEEMismatchesReachTheCaller(t *testing.T) {
	sum := sha512.Sum384([]byte(initdata))
	type mismatch struct {
		name     string
		mod      func(any)
		untrust  bool
		initdata bool
		want     string
	}
	for _, tc := range teeCases() {
		cases := []mismatch{
			{name: "signature (untrusted root)", untrust: true, want: "signature chain"},
			{name: "init-data", initdata: true, mod: func(hw any) {
				// The host bound other initdata than the guest sends.
				if s, ok := hw.(*fakehw.SNP); ok {
					copy(s.HostData[:], "other")
				}
				if x, ok := hw.(*fakehw.TDX); ok {
					copy(x.MrConfigID[:], "other")
				}
			}, want: "init-data digest does not match"},
			{name: "init-data matches", initdata: true, mod: func(hw any) {
				if s, ok := hw.(*fakehw.SNP); ok {
					copy(s.HostData[:], sum[:])
				}
				if x, ok := hw.(*fakehw.TDX); ok {
					copy(x.MrConfigID[:], sum[:])
				}
			}},
		}
		if tc.tee == "snp" {
			cases = append(cases, mismatch{name: "VMPL", mod: func(hw any) { hw.(*fakehw.SNP).VMPL = 1 }, want: "VMPL 1"})
		} else {
			cases = append(cases, mismatch{name: "report_data", mod: func(hw any) { hw.(*fakehw.TDX).FlipReportData = true }, want: "does not carry the requested report_data"})
		}
		for _, c := range cases {
			t.Run(tc.tee+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				mod := c.mod
				if mod == nil {
					mod = func(any) {}
				}
				kcfg := tc.setup(t, dir, mod)
				if c.untrust {
					kcfg = tc.untrusted(t)
				}
				k := newKBS(t, kcfg)
				args := []string{"--kbs-url", k.URL, "--attester", tc.tee}
				if c.initdata {
					f := filepath.Join(t.TempDir(), "initdata.toml")
					if err := os.WriteFile(f, []byte(initdata), 0o600); err != nil {
						t.Fatal(err)
					}
					args = append(args, "--initdata", f)
				}
				p := startInProcess(t, k, fakeHW(t, tc.tee, dir), nil, args...)
				r := p.get(cocoOne)
				if c.want == "" {
					if r.Status != 200 || r.Body != "a secret" {
						t.Fatalf("%d %s", r.Status, r.Body)
					}
					return
				}
				var pb problemBody
				_ = json.Unmarshal([]byte(r.Body), &pb)
				if r.Status != 503 || pb.Type != "urn:cdh-proxy:attestation-failed" || !strings.Contains(pb.Detail, c.want) {
					t.Fatalf("got %d %s, want 503 attestation-failed mentioning %q", r.Status, r.Body, c.want)
				}
			})
		}
	}
}

func TestEvidenceCommandAndRoute(t *testing.T) {
	for _, tc := range teeCases() {
		t.Run(tc.tee, func(t *testing.T) {
			dir := t.TempDir()
			k := newKBS(t, tc.setup(t, dir, func(any) {}))
			out, err := execProxyEnv(fakeProxyBin, fakeEnv(tc.tee, dir), "evidence", "--runtime-data", "hello")
			if err != nil {
				t.Fatalf("evidence: %v\n%s", err, out)
			}
			var ev map[string]json.RawMessage
			line := strings.TrimSpace(out[strings.Index(out, "{"):])
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("evidence output is not JSON: %v\n%s", err, out)
			}
			key := map[string]string{"tdx": "quote", "snp": "attestation_report"}[tc.tee]
			if _, ok := ev[key]; !ok {
				t.Fatalf("evidence lacks %s: %s", key, out)
			}
			p := startInProcess(t, k, fakeHW(t, tc.tee, dir), nil, "--kbs-url", k.URL, "--features", "all")
			r := p.get("/aa/evidence?runtime_data=aGVsbG8&encoding=base64")
			if r.Status != 200 || !strings.Contains(r.Body, `"`+key+`"`) {
				t.Fatalf("/aa/evidence: %d %.200s", r.Status, r.Body)
			}
			if r := p.get("/aa/evidence?runtime_data=" + strings.Repeat("x", 65)); r.Status != 400 {
				t.Fatalf("65 bytes of runtime data: %d", r.Status)
			}
			if r := p.get("/aa/evidence?runtime_data=a&encoding=base64x"); r.Status != 400 {
				t.Fatalf("bad encoding: %d", r.Status)
			}
		})
	}
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL)
	if r := p.get("/aa/evidence?runtime_data=x"); r.Status != 404 || !strings.Contains(r.Body, "feature not enabled") {
		t.Fatalf("/aa/evidence with features=resource: %d %s", r.Status, r.Body)
	}
}
