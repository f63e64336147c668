package azure_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

type cvm struct {
	dev  *azure.Device
	para *fakehw.Paravisor
	tpm  string
}

// newCVM is an Azure CVM in miniature (swtpm is required: `make test`
// installs it); run says whether the paravisor answers.
func newCVM(t testing.TB, tee string, run bool) cvm {
	t.Helper()
	vm, err := fakehw.NewAzureCVM(tee, run)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.Close)
	return cvm{dev: azure.NewDevice(azure.Options{TPM: vm.TPM, IMDS: vm.IMDS, PollTimeout: 2 * time.Second}), para: vm.Paravisor, tpm: vm.TPM}
}

func rdFor(s string) []byte {
	h := sha512.Sum384([]byte(s))
	return h[:]
}

// checkEvidence checks what the attester promises about its evidence (the
// full verification is the test KBS's, exercised end to end).
func checkEvidence(t *testing.T, tee string, raw []byte, rd []byte, version int) {
	t.Helper()
	ev, err := evidence.ParseEvidence(tee, raw)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Version != version {
		t.Errorf("version %d, want %d", ev.Version, version)
	}
	hcl, err := evidence.ParseHCLReport(ev.HCLReport)
	if err != nil {
		t.Fatal(err)
	}
	c, err := hcl.Claims()
	if err != nil {
		t.Fatal(err)
	}
	if c.UserData != evidence.UserDataFor(rd) || !hcl.Consistent() || hcl.Tee() != tee {
		t.Errorf("HCL report: user-data %s consistent %v tee %s", c.UserData, hcl.Consistent(), hcl.Tee())
	}
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.TPMQuote.Message)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(attest.ExtraData.Buffer, rd) {
		t.Errorf("quote nonce %x, want the unpadded runtime data %x", attest.ExtraData.Buffer, rd)
	}
	q, _ := attest.Attested.Quote()
	if !bytes.Equal(q.PCRDigest.Buffer, evidence.PCRDigest(func() [][]byte {
		out := make([][]byte, len(ev.TPMQuote.PCRs))
		for i, p := range ev.TPMQuote.PCRs {
			out[i] = p
		}
		return out
	}())) {
		t.Error("PCR list does not match the quote's digest")
	}
	if (tee == azure.TeeSNP) != (len(ev.VCEK) > 0) || (tee == azure.TeeTDX) != (len(ev.TDQuote) > 0) {
		t.Errorf("vcek %d bytes, td_quote %d bytes", len(ev.VCEK), len(ev.TDQuote))
	}
}

func TestEvidenceOverSwtpm(t *testing.T) {
	for _, tee := range []string{azure.TeeSNP, azure.TeeTDX} {
		t.Run(tee, func(t *testing.T) {
			c := newCVM(t, tee, true)
			if got, err := c.dev.Detect(context.Background()); err != nil || got != tee {
				t.Fatalf("Detect = %q, %v", got, err)
			}
			for _, version := range []int{2, 1} {
				a, err := azure.New(c.dev, tee, version)
				if err != nil {
					t.Fatal(err)
				}
				rd := rdFor(fmt.Sprint(tee, version))
				raw, err := a.Evidence(context.Background(), rd)
				if err != nil {
					t.Fatal(err)
				}
				checkEvidence(t, tee, raw, rd, version)
			}
		})
	}
}

// Concurrent callers each get evidence for their own runtime data: the
// write → refresh → quote sequence is serialized.
func TestEvidenceSerialized(t *testing.T) {
	c := newCVM(t, azure.TeeSNP, true)
	a, _ := azure.New(c.dev, azure.TeeSNP, 2)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			rd := rdFor(fmt.Sprint("caller", i))
			raw, err := a.Evidence(context.Background(), rd)
			if err != nil {
				t.Error(err)
				return
			}
			checkEvidence(t, azure.TeeSNP, raw, rd, 2)
		})
	}
	wg.Wait()
}

func TestEvidenceParavisorSilent(t *testing.T) {
	c := newCVM(t, azure.TeeSNP, false)
	a, _ := azure.New(c.dev, azure.TeeSNP, 2)
	_, err := a.Evidence(context.Background(), rdFor("x"))
	if err == nil || !strings.Contains(err.Error(), "paravisor did not refresh the HCL report") {
		t.Fatalf("err = %v", err)
	}
}

func TestEvidenceRejectsLongRuntimeData(t *testing.T) {
	a, _ := azure.New(azure.NewDevice(azure.Options{TPM: "/nonexistent"}), azure.TeeSNP, 2)
	if _, err := a.Evidence(context.Background(), make([]byte, 65)); err == nil {
		t.Fatal("65 bytes accepted")
	}
}

func TestDetectNotAzure(t *testing.T) {
	sw, err := fakehw.StartSwtpm() // a TPM without the paravisor's indexes
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	for _, path := range []string{sw.Path, "/nonexistent/tpm"} {
		_, err := azure.NewDevice(azure.Options{TPM: path}).Detect(context.Background())
		if err == nil || !strings.Contains(err.Error(), "no Azure CVM vTPM") {
			t.Errorf("%s: %v", path, err)
		}
	}
}

func TestBindInitData(t *testing.T) {
	c := newCVM(t, azure.TeeSNP, true)
	a, _ := azure.New(c.dev, azure.TeeSNP, 2)
	ctx := context.Background()
	d := sha256.Sum256([]byte("initdata"))
	if ext, err := a.BindInitData(ctx, "sha256", d[:]); err != nil || !ext {
		t.Fatalf("first bind: %v %v", ext, err)
	}
	// A restart, or a second process (the AA beside the CDH), binds the same
	// init-data again: nothing changes.
	if ext, err := a.BindInitData(ctx, "sha256", d[:]); err != nil || ext {
		t.Fatalf("second bind: %v %v", ext, err)
	}
	other := sha256.Sum256([]byte("other"))
	if _, err := a.BindInitData(ctx, "sha256", other[:]); err == nil || !strings.Contains(err.Error(), "PCR8 already holds") {
		t.Fatalf("other init-data: %v", err)
	}
	if _, err := a.BindInitData(ctx, "sha384", make([]byte, 48)); err == nil || !strings.Contains(err.Error(), `algorithm = "sha256"`) {
		t.Fatalf("sha384: %v", err)
	}
	raw, err := a.Evidence(ctx, rdFor("y"))
	if err != nil {
		t.Fatal(err)
	}
	var ev evidence.Evidence
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.TPMQuote.PCRs[8], evidence.InitDataPCR8(d[:])) {
		t.Fatalf("PCR8 = %x", ev.TPMQuote.PCRs[8])
	}
}

// BenchmarkEvidence is one attestation's evidence over swtpm: NV write, the
// paravisor's refresh (a 10 ms watch loop here), the HCL read, quote, PCR
// read, and the metadata service (VCEK cached after the first call).
func BenchmarkEvidence(b *testing.B) {
	for _, tee := range []string{azure.TeeSNP, azure.TeeTDX} {
		b.Run(tee, func(b *testing.B) {
			c := newCVM(b, tee, true)
			a, _ := azure.New(c.dev, tee, 2)
			i := 0
			for b.Loop() {
				i++
				if _, err := a.Evidence(context.Background(), rdFor(fmt.Sprint(i))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A caller queued behind a slow sequence leaves when its context ends.
func TestEvidenceWaitHonorsContext(t *testing.T) {
	c := newCVM(t, azure.TeeSNP, false) // silent paravisor: the first call holds the vTPM for 2 s
	a, _ := azure.New(c.dev, azure.TeeSNP, 2)
	held := make(chan error, 1)
	go func() { _, err := a.Evidence(context.Background(), rdFor("slow")); held <- err }()
	// The first call holds the vTPM once its runtime data is written.
	testutil.Eventually(t, 10*time.Second, "the first caller to write its runtime data", func() bool {
		tp, err := linuxudstpm.Open(c.tpm)
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		got, err := azure.ReadNV(tp, azure.NVIndexRuntimeData)
		return err == nil && bytes.HasPrefix(got, rdFor("slow"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := a.Evidence(ctx, rdFor("queued"))
	if err == nil || !strings.Contains(err.Error(), "waiting for the vTPM") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued caller: %v", err)
	}
	if err := <-held; err == nil {
		t.Fatal("silent paravisor: evidence without a fresh report")
	}
}

// Runtime measurements extend the vTPM's SHA-256 PCRs; PCR 17 is a
// dynamic-launch PCR that a TPM refuses from the guest's locality, as
// Azure does, and the error says what to do.
func TestRuntimeRegisters(t *testing.T) {
	c := newCVM(t, azure.TeeSNP, false)
	a, _ := azure.New(c.dev, azure.TeeSNP, 2)
	regs, err := a.RuntimeRegisters()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if r, err := regs.Register(23); err != nil || r != 23 {
		t.Fatalf("Register(23) = %d, %v", r, err)
	}
	if _, err := regs.Register(24); err == nil {
		t.Error("PCR 24 accepted")
	}
	before, err := regs.Read(ctx, 23)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("event"))
	if err := regs.Extend(ctx, 23, d[:]); err != nil {
		t.Fatal(err)
	}
	after, _ := regs.Read(ctx, 23)
	want := sha256.Sum256(append(append([]byte(nil), before...), d[:]...))
	if !bytes.Equal(after, want[:]) {
		t.Errorf("PCR23 = %x, want %x", after, want)
	}
	err = regs.Extend(ctx, 17, d[:])
	if err == nil || !strings.Contains(err.Error(), "init_pcr = 23") || !strings.Contains(err.Error(), "PCR17") {
		t.Errorf("PCR 17: %v, want a refusal naming the PCR and the fix", err)
	}
}
