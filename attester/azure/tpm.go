package azure

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cdh-proxy/cdh-proxy/attester/azure/evidence"
)

// The paravisor's vTPM interface.
const (
	NVIndexHCLReport   = 0x01400001 // the HCL report, rewritten by the paravisor
	NVIndexRuntimeData = 0x01400002 // runtime data the next HCL report binds
	AKHandle           = 0x81000003 // the attestation key named HCLAkPub in the claims
	initDataPCR        = 8
)

func ownerAuth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Name: tpm2.HandleName(tpm2.TPMRHOwner), Auth: tpm2.PasswordAuth(nil)}
}

// nvBufferMax is the largest NV read or write the TPM takes in one command.
func nvBufferMax(t transport.TPM) int {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTNVBufferMax), PropertyCount: 1}.Execute(t)
	if err == nil {
		if props, err := rsp.CapabilityData.Data.TPMProperties(); err == nil {
			for _, p := range props.TPMProperty {
				if p.Property == tpm2.TPMPTNVBufferMax && p.Value > 0 {
					return int(p.Value)
				}
			}
		}
	}
	return 512 // the PC Client minimum
}

// nvIndex is an NV index's handle, name and size, read once per sequence.
type nvIndex struct {
	index uint32
	h     tpm2.NamedHandle
	size  int
}

func openNV(t transport.TPM, index uint32) (nvIndex, error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
	if err != nil {
		return nvIndex{}, fmt.Errorf("NV index %#x: %w", index, err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nvIndex{}, fmt.Errorf("NV index %#x: %w", index, err)
	}
	return nvIndex{index: index, h: tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: rsp.NVName}, size: int(pub.DataSize)}, nil
}

// read reads the whole index with owner authorization, chunk bytes per command.
func (nv nvIndex) read(t transport.TPM, chunk int) ([]byte, error) {
	out := make([]byte, 0, nv.size)
	for off := 0; off < nv.size; off += chunk {
		n := min(chunk, nv.size-off)
		rsp, err := tpm2.NVRead{AuthHandle: ownerAuth(), NVIndex: nv.h, Size: uint16(n), Offset: uint16(off)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read NV index %#x at %d: %w", nv.index, off, err)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// write writes data at offset 0, chunk bytes per command.
func (nv nvIndex) write(t transport.TPM, chunk int, data []byte) error {
	if len(data) > nv.size {
		return fmt.Errorf("NV index %#x holds %d bytes, not %d", nv.index, nv.size, len(data))
	}
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		if _, err := (tpm2.NVWrite{AuthHandle: ownerAuth(), NVIndex: nv.h, Data: tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]}, Offset: uint16(off)}).Execute(t); err != nil {
			return fmt.Errorf("write NV index %#x at %d: %w", nv.index, off, err)
		}
	}
	return nil
}

// ReadNV reads a whole NV index with owner authorization, in chunks the TPM
// accepts.
func ReadNV(t transport.TPM, index uint32) ([]byte, error) {
	nv, err := openNV(t, index)
	if err != nil {
		return nil, err
	}
	return nv.read(t, nvBufferMax(t))
}

// WriteNV writes data at offset 0 of an NV index, in chunks.
func WriteNV(t transport.TPM, index uint32, data []byte) error {
	nv, err := openNV(t, index)
	if err != nil {
		return err
	}
	return nv.write(t, nvBufferMax(t), data)
}

// DefineNV creates an owner-readable, owner-writable ordinary index.
func DefineNV(t transport.TPM, index uint32, size int) error {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: ownerAuth(),
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex:    tpm2.TPMHandle(index),
			NameAlg:    tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, AuthWrite: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
			DataSize:   uint16(size),
		}),
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("define NV index %#x: %w", index, err)
	}
	return nil
}

// writeRuntimeData puts rd, zero-padded, into the runtime-data index,
// defining it (64 bytes) when the paravisor has not.
func writeRuntimeData(t transport.TPM, chunk int, rd []byte) error {
	nv, err := openNV(t, NVIndexRuntimeData)
	if err != nil {
		if !isHandleError(err) {
			return err
		}
		if err := DefineNV(t, NVIndexRuntimeData, 64); err != nil {
			return err
		}
		if nv, err = openNV(t, NVIndexRuntimeData); err != nil {
			return err
		}
	}
	if nv.size < len(rd) || nv.size > 64 {
		return fmt.Errorf("NV index %#x is %d bytes: want %d–64", NVIndexRuntimeData, nv.size, len(rd))
	}
	buf := make([]byte, nv.size)
	copy(buf, rd)
	return nv.write(t, chunk, buf)
}

// isHandleError reports a TPM answer meaning "no such handle".
func isHandleError(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle)
}

// pcrSelection is SHA-256 PCRs pcrs.
func pcrSelection(pcrs ...uint) tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...)}}}
}

var allPCRs = func() []uint {
	p := make([]uint, 24)
	for i := range p {
		p[i] = uint(i)
	}
	return p
}()

// quote signs SHA-256 PCRs 0–23 with the AK, rd as qualifying data.
// It returns the marshalled TPMS_ATTEST, the raw signature and the quoted
// PCR digest.
func quote(t transport.TPM, rd []byte) (msg, sig, digest []byte, err error) {
	pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(t)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("attestation key %#x: %w", AKHandle, err)
	}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: tpm2.TPMHandle(AKHandle), Name: pub.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: rd},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      pcrSelection(allPCRs...),
	}.Execute(t)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("TPM2_Quote: %w", err)
	}
	rsa, err := rsp.Signature.Signature.RSASSA()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("TPM2_Quote: AK %#x is not an RSASSA key: %w", AKHandle, err)
	}
	msg = rsp.Quoted.Bytes()
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](msg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("TPM2_Quote: %w", err)
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("TPM2_Quote: %w", err)
	}
	return msg, rsa.Sig.Buffer, info.PCRDigest.Buffer, nil
}

// readPCRs reads SHA-256 PCRs 0–23, eight per command (what TPMs return at
// most in one answer).
func readPCRs(t transport.TPM) ([][]byte, error) {
	out := make([][]byte, 0, 24)
	for first := uint(0); first < 24; first += 8 {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(allPCRs[first : first+8]...)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_PCR_Read: %w", err)
		}
		if len(rsp.PCRValues.Digests) != 8 {
			return nil, fmt.Errorf("TPM2_PCR_Read: %d values for PCR%d–%d", len(rsp.PCRValues.Digests), first, first+7)
		}
		for _, d := range rsp.PCRValues.Digests {
			out = append(out, d.Buffer)
		}
	}
	return out, nil
}

// quoteWithPCRs quotes and reads the PCRs the quote covers; a PCR extended
// between the two commands is caught by the digest and retried.
func quoteWithPCRs(t transport.TPM, rd []byte) (msg, sig []byte, pcrs [][]byte, err error) {
	for range 3 {
		var digest []byte
		if msg, sig, digest, err = quote(t, rd); err != nil {
			return nil, nil, nil, err
		}
		if pcrs, err = readPCRs(t); err != nil {
			return nil, nil, nil, err
		}
		if bytes.Equal(evidence.PCRDigest(pcrs), digest) {
			return msg, sig, pcrs, nil
		}
	}
	return nil, nil, nil, errors.New("PCRs kept changing between TPM2_Quote and TPM2_PCR_Read")
}

// extendInitData measures the init-data digest into PCR8 once per boot. It
// is idempotent across processes and restarts: PCR8 already holding exactly
// that measurement is left alone, anything else is an error.
func extendInitData(t transport.TPM, digest []byte) (extended bool, err error) {
	pcrs, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(initDataPCR)}.Execute(t)
	if err != nil || len(pcrs.PCRValues.Digests) != 1 {
		return false, fmt.Errorf("read PCR%d: %v", initDataPCR, err)
	}
	cur := pcrs.PCRValues.Digests[0].Buffer
	switch {
	case bytes.Equal(cur, evidence.InitDataPCR8(digest)):
		return false, nil
	case !bytes.Equal(cur, make([]byte, 32)):
		return false, fmt.Errorf("PCR%d already holds another measurement (%x): init-data cannot be bound; was the VM booted with different init-data?", initDataPCR, cur)
	}
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(initDataPCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
	}.Execute(t)
	if err != nil {
		return false, fmt.Errorf("extend PCR%d: %w", initDataPCR, err)
	}
	return true, nil
}
