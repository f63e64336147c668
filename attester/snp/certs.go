package snp

import (
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/abi"
)

// CertEntry is one element of the sev crate's cert_chain.
type CertEntry struct {
	CertType string `json:"cert_type"` // ARK, ASK, VCEK, VLEK, CRL
	Data     Bytes  `json:"data"`      // DER, as a number array
}

// certTypes maps the cert-table GUIDs the verifier knows to its names.
var certTypes = map[string]string{
	"c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
	"4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
	"63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
	"a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
	"92f81bc3-5811-4d3d-97ff-d19f88dc67ea": "CRL",
}

// CertChain converts the GUID certificate table that comes with an extended
// report into cert_chain. Unknown GUIDs (go-sev-guest appends a
// platform-info entry) are dropped: a plain unknown cert_type makes the whole
// evidence unparseable for the verifier. It returns nil — sent as null — when
// there is no VCEK or VLEK, because an empty list is fatal to the verifier
// while null makes it fetch the VCEK from AMD.
func CertChain(table []byte) ([]CertEntry, error) {
	if len(table) == 0 {
		return nil, nil
	}
	headers, err := abi.ParseSnpCertTableHeader(table)
	if err != nil {
		return nil, fmt.Errorf("snp cert table: %w", err)
	}
	var out []CertEntry
	signer := false
	for _, h := range headers {
		name, ok := certTypes[strings.ToLower(h.GUID.String())]
		if !ok {
			continue
		}
		end := uint64(h.Offset) + uint64(h.Length)
		if end > uint64(len(table)) {
			return nil, fmt.Errorf("snp cert table: %s entry [%d,%d) beyond %d bytes", name, h.Offset, end, len(table))
		}
		out = append(out, CertEntry{CertType: name, Data: append(Bytes(nil), table[h.Offset:end]...)})
		signer = signer || name == "VCEK" || name == "VLEK"
	}
	if !signer {
		return nil, nil
	}
	return out, nil
}
