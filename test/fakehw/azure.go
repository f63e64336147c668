package fakehw

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/cdh-proxy/cdh-proxy/attester/azure"
	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
)

// Swtpm is a software TPM 2.0 (Debian's swtpm) serving the TPM command
// protocol on a unix socket, one command per connection.
type Swtpm struct {
	Path string // the command socket
	cmd  *exec.Cmd
	dir  string
}

// ErrNoSwtpm means the swtpm binary is not installed (`make test` installs
// it: make test-tools).
var ErrNoSwtpm = errors.New("swtpm not found in PATH: run `make test-tools` (Debian: apt-get install swtpm)")

// StartSwtpm starts a fresh TPM with its state in a new temporary
// directory (short: unix socket paths are limited to 108 bytes).
func StartSwtpm() (*Swtpm, error) {
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, ErrNoSwtpm
	}
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		return nil, err
	}
	s := &Swtpm{Path: filepath.Join(dir, "tpm.sock"), dir: dir}
	s.cmd = exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+s.Path, "--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear")
	out, _ := os.Create(filepath.Join(dir, "swtpm.log"))
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if t, err := linuxudstpm.Open(s.Path); err == nil {
			_, err = tpm2.GetRandom{BytesRequested: 1}.Execute(t)
			t.Close()
			if err == nil {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "swtpm.log"))
			s.Close()
			return nil, fmt.Errorf("swtpm did not come up: %s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops swtpm and removes its state.
func (s *Swtpm) Close() error {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	return os.RemoveAll(s.dir)
}

// Paravisor plays Azure's HCL over a TPM: it owns the attestation key at
// 0x81000003 and the HCL report at 0x01400001, and whenever the guest
// writes new runtime data to 0x01400002 it rewrites the report with a
// fresh hardware report (signed SNP report, or TD report) binding the
// runtime claims. IMDS serves what Azure's metadata service would.
type Paravisor struct {
	Tee string // azure.TeeSNP or azure.TeeTDX
	SNP *SNP   // signs the SNP reports (az-snp-vtpm)
	TDX *TDX   // turns TD reports into quotes (az-tdx-vtpm)

	tpm   string
	akPub *rsa.PublicKey

	mu        sync.Mutex
	refreshes int
	last      []byte
}

// hclSize is the synthetic report's size: swtpm's NV indexes hold at most
// 2048 bytes (Azure's real ones are larger).
const hclSize = 2048

// NewParavisor provisions the TPM at tpmPath like Azure's paravisor does at
// boot (AK, HCL report with empty user-data). The runtime-data index is
// left for the guest to define, as on a fresh VM.
func NewParavisor(tpmPath, tee string) (*Paravisor, error) {
	p := &Paravisor{Tee: tee, tpm: tpmPath}
	var err error
	switch tee {
	case azure.TeeSNP:
		if p.SNP, err = NewSNP("Genoa"); err != nil {
			return nil, err
		}
	case azure.TeeTDX:
		if p.TDX, err = NewTDX(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("fakehw: unknown Azure tee %q", tee)
	}
	t, err := linuxudstpm.Open(tpmPath)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if p.akPub, err = createAK(t); err != nil {
		return nil, err
	}
	if err := azure.DefineNV(t, azure.NVIndexHCLReport, hclSize); err != nil {
		return nil, err
	}
	report, err := p.report(make([]byte, 64))
	if err != nil {
		return nil, err
	}
	return p, azure.WriteNV(t, azure.NVIndexHCLReport, report)
}

// createAK makes the RSA-2048 RSASSA-SHA256 restricted signing key and
// persists it at the AK handle.
func createAK(t transport.TPM) (*rsa.PublicKey, error) {
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Name: tpm2.HandleName(tpm2.TPMRHOwner), Auth: tpm2.PasswordAuth(nil)}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: owner,
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true, NoDA: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme:  tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
		}),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(t) //nolint:errcheck
	if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, PersistentHandle: azure.AKHandle}).Execute(t); err != nil {
		return nil, fmt.Errorf("persist AK: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, err
	}
	n, err := pub.Unique.RSA()
	if err != nil {
		return nil, err
	}
	return tpm2.RSAPub(parms, n)
}

// report builds an HCL report whose user-data is rd (zero-padded) and whose
// hardware report binds the claims.
func (p *Paravisor) report(rd []byte) ([]byte, error) {
	claims, _ := json.Marshal(map[string]any{
		"keys": []map[string]any{{
			"kid": "HCLAkPub", "key_ops": []string{"sign"}, "kty": "RSA",
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(p.akPub.E)).Bytes()),
			"n": base64.RawURLEncoding.EncodeToString(p.akPub.N.Bytes()),
		}},
		"vm-configuration": map[string]any{"secure-boot": true, "tpm-enabled": true, "console-enabled": false},
		"user-data":        evidence.UserDataFor(rd),
	})
	var bind [64]byte
	sum := sha256.Sum256(claims)
	copy(bind[:], sum[:])

	r := make([]byte, hclSize)
	le := binary.LittleEndian
	copy(r, "HCLA")
	le.PutUint32(r[4:], 2)
	le.PutUint32(r[8:], uint32(1236+len(claims)))
	le.PutUint32(r[12:], 2) // request type
	switch p.Tee {
	case azure.TeeSNP:
		hw, err := p.SNP.RawReport(bind)
		if err != nil {
			return nil, err
		}
		copy(r[32:], hw)
		le.PutUint32(r[1224:], 2)
	case azure.TeeTDX:
		td := make([]byte, 1024)
		td[0] = 0x81            // REPORTTYPE: TDX
		copy(td[128:], bind[:]) // REPORTDATA
		for i := 512; i < 560; i++ {
			td[i] = byte(i) // some TDINFO
		}
		copy(r[32:], td)
		le.PutUint32(r[1224:], 4)
	}
	le.PutUint32(r[1216:], uint32(20+len(claims)))
	le.PutUint32(r[1220:], 1)
	le.PutUint32(r[1228:], 1) // SHA-256
	le.PutUint32(r[1232:], uint32(len(claims)))
	if 1236+len(claims) > hclSize {
		return nil, fmt.Errorf("fakehw: claims of %d bytes do not fit", len(claims))
	}
	copy(r[1236:], claims)
	return r, nil
}

// Refreshes counts the HCL reports written for new runtime data.
func (p *Paravisor) Refreshes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refreshes
}

// Run watches the runtime-data index and rewrites the HCL report when it
// changes, until ctx ends. Like the real paravisor it works beside the
// guest, not in lockstep with it.
func (p *Paravisor) Run(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		_ = p.poll()
	}
}

func (p *Paravisor) poll() error {
	t, err := linuxudstpm.Open(p.tpm)
	if err != nil {
		return err
	}
	defer t.Close()
	rd, err := azure.ReadNV(t, azure.NVIndexRuntimeData)
	if err != nil {
		return err // not defined yet
	}
	p.mu.Lock()
	same := p.last != nil && string(p.last) == string(rd)
	p.mu.Unlock()
	if same {
		return nil
	}
	report, err := p.report(rd)
	if err != nil {
		return err
	}
	// Counted before the write lands, so a guest that has read the new
	// report can never observe an older count.
	p.mu.Lock()
	p.refreshes++
	p.mu.Unlock()
	if err := azure.WriteNV(t, azure.NVIndexHCLReport, report); err != nil {
		p.mu.Lock()
		p.refreshes--
		p.mu.Unlock()
		return err
	}
	p.mu.Lock()
	p.last = rd
	p.mu.Unlock()
	return nil
}

// IMDS answers like Azure's instance metadata service: the VCEK for
// az-snp-vtpm, TD quotes for az-tdx-vtpm. It insists on the Metadata
// header and, for quotes, on the exact content type.
func (p *Paravisor) IMDS() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metadata/THIM/amd/certification", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || p.SNP == nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{
			"vcekCert":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.SNP.VCEKDER()})),
			"certificateChain": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.SNP.ask.Raw})),
		})
	})
	mux.HandleFunc("POST /acc/tdquote", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || r.Header.Get("Content-Type") != "application/json" || p.TDX == nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		var req struct {
			Report string `json:"report"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || strings.ContainsAny(req.Report, "+/") {
			http.Error(w, "bad report", http.StatusBadRequest)
			return
		}
		td, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Report, "="))
		if err != nil || len(td) != 1024 {
			http.Error(w, "bad report", http.StatusBadRequest)
			return
		}
		var rd [64]byte
		copy(rd[:], td[128:192])
		q, err := p.TDX.Quote(r.Context(), rd)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"quote": base64.RawURLEncoding.EncodeToString(q)})
	})
	return mux
}

// AzureCVM is a whole simulated Azure confidential VM: swtpm as the vTPM,
// the paravisor watching it, and the metadata service.
type AzureCVM struct {
	*Paravisor
	TPM  string // the vTPM's socket (--tpm)
	IMDS string // the metadata service base URL (--azure-imds)

	sw     *Swtpm
	imds   *httptest.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// NewAzureCVM starts a VM of type tee (azure.TeeSNP or azure.TeeTDX);
// watch says whether the paravisor answers runtime-data writes.
func NewAzureCVM(tee string, watch bool) (*AzureCVM, error) {
	sw, err := StartSwtpm()
	if err != nil {
		return nil, err
	}
	p, err := NewParavisor(sw.Path, tee)
	if err != nil {
		sw.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &AzureCVM{Paravisor: p, TPM: sw.Path, sw: sw, imds: httptest.NewServer(p.IMDS()), cancel: cancel, done: make(chan struct{})}
	c.IMDS = c.imds.URL
	go func() {
		defer close(c.done)
		if watch {
			p.Run(ctx)
		}
	}()
	return c, nil
}

// Close stops the VM.
func (c *AzureCVM) Close() {
	c.cancel()
	<-c.done
	c.imds.Close()
	c.sw.Close()
}
