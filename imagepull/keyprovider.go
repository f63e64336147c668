package imagepull

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// AnnotationID is the layer annotation ocicrypt's key-provider scheme
// "attestation-agent" writes; its value is base64 CoCo annotation packets,
// comma-separated when a layer has several recipients.
const AnnotationID = "org.opencontainers.image.enc.keys.provider.attestation-agent"

// AnnotationPacket is the CoCo key-provider packet (guest-components
// kms::plugins::kbs AnnotationPacket). A v1 packet (kid, wrapped_data, iv,
// wrap_type) is a v2 packet without version and provider.
type AnnotationPacket struct {
	Version          string         `json:"version,omitempty"`
	KID              string         `json:"kid"`
	WrappedData      string         `json:"wrapped_data"`
	IV               string         `json:"iv,omitempty"`
	WrapType         string         `json:"wrap_type,omitempty"`
	Provider         string         `json:"provider,omitempty"`
	ProviderSettings map[string]any `json:"provider_settings,omitempty"`
	Annotations      map[string]any `json:"annotations,omitempty"`
}

// wrapA256GCM is the only wrap type the kbs provider writes.
const wrapA256GCM = "A256GCM"

// ParseAnnotationPacket checks a packet's shape; it does not fetch the key.
func ParseAnnotationPacket(b []byte) (*AnnotationPacket, error) {
	var p AnnotationPacket
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "annotation packet is not JSON", Err: err}
	}
	if p.Provider == "" {
		p.Provider = "kbs"
	}
	if p.Version == "" {
		p.Version = "0.1.0"
	}
	if p.Provider != "kbs" {
		return nil, &Error{Code: CodeUnsupported, Msg: fmt.Sprintf("annotation packet provider %q is not supported (only kbs)", p.Provider)}
	}
	if p.WrapType == "" {
		p.WrapType = wrapA256GCM
	}
	if p.WrapType != wrapA256GCM {
		return nil, &Error{Code: CodeUnsupported, Msg: fmt.Sprintf("annotation packet wrap_type %q is not supported (only A256GCM)", p.WrapType)}
	}
	if !strings.HasPrefix(p.KID, "kbs:///") {
		return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("annotation packet kid %q is not a kbs:/// resource URI", p.KID)}
	}
	if p.WrappedData == "" || p.IV == "" {
		return nil, &Error{Code: CodeInvalid, Msg: "annotation packet for " + p.KID + " lacks wrapped_data or iv"}
	}
	return &p, nil
}

// unwrap fetches the packet's KEK and opens wrapped_data: the layer's
// ocicrypt private options (JSON with the symmetric key).
func unwrap(ctx context.Context, fetch Fetcher, p *AnnotationPacket) ([]byte, error) {
	wrapped, err := base64.StdEncoding.DecodeString(p.WrappedData)
	if err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "annotation packet for " + p.KID + ": wrapped_data is not base64"}
	}
	iv, err := base64.StdEncoding.DecodeString(p.IV)
	if err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "annotation packet for " + p.KID + ": iv is not base64"}
	}
	kek, err := fetch.Fetch(ctx, p.KID)
	if err != nil {
		return nil, &Error{Code: CodeFromFetch, Msg: "key " + p.KID, Err: err}
	}
	defer clear(kek)
	if len(kek) != 32 {
		return nil, &Error{Code: CodeDenied, Msg: fmt.Sprintf("key %s is %d bytes, an A256GCM key is 32", p.KID, len(kek))}
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, len(iv))
	if err != nil || len(iv) == 0 {
		return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("annotation packet for %s: bad iv length %d", p.KID, len(iv))}
	}
	opts, err := gcm.Open(nil, iv, wrapped, nil)
	if err != nil {
		return nil, &Error{Code: CodeDenied, Msg: "key " + p.KID + " does not open this layer's wrapped key (wrong key?)"}
	}
	return opts, nil
}

// unwrapAnnotation tries each comma-separated base64 packet of a layer's
// annotation and returns the first that opens; the last error otherwise.
func unwrapAnnotation(ctx context.Context, fetch Fetcher, b64 string) ([]byte, error) {
	var last error = &Error{Code: CodeInvalid, Msg: "empty key-provider annotation"}
	for part := range strings.SplitSeq(b64, ",") {
		raw, err := base64.StdEncoding.DecodeString(part)
		if err != nil {
			last = &Error{Code: CodeInvalid, Msg: "key-provider annotation is not base64"}
			continue
		}
		p, err := ParseAnnotationPacket(raw)
		if err != nil {
			last = err
			continue
		}
		opts, err := unwrap(ctx, fetch, p)
		if err == nil {
			return opts, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// keyProviderInput is ocicrypt's key-provider protocol input
// (keyprovider.KeyProviderKeyWrapProtocolInput's JSON).
type keyProviderInput struct {
	Op              string `json:"op"`
	KeyUnwrapParams struct {
		Annotation jsonBytes `json:"annotation"` // the packet
	} `json:"keyunwrapparams"`
}

type keyProviderOutput struct {
	KeyUnwrapResults struct {
		OptsData jsonBytes `json:"optsdata"`
	} `json:"keyunwrapresults"`
}

// jsonBytes is bytes in the key-provider protocol's JSON as both of its
// ecosystems write them: read from a base64 string (Go ocicrypt, and
// guest-components' annotation) or an array of numbers (serde's Vec<u8>),
// written as the array, as guest-components' CDH answers UnWrapKey — the
// Rust ocicrypt-rs client of the CDH socket reads optsdata only so.
type jsonBytes []byte

func (b jsonBytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, 2+4*len(b))
	out = append(out, '[')
	for i, c := range b {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, uint64(c), 10)
	}
	return append(out, ']'), nil
}

func (b *jsonBytes) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var raw []byte // encoding/json reads a string into []byte as base64
		if err := json.Unmarshal(data, &raw); err != nil {
			return err
		}
		*b = raw
		return nil
	}
	var nums []uint8Num
	if err := json.Unmarshal(data, &nums); err != nil {
		return errors.New("want a base64 string or an array of bytes")
	}
	out := make([]byte, len(nums))
	for i, n := range nums {
		out[i] = byte(n)
	}
	*b = out
	return nil
}

// uint8Num is one element of a byte array: a number from 0 to 255.
type uint8Num uint8

func (n *uint8Num) UnmarshalJSON(data []byte) error {
	v, err := strconv.ParseUint(string(data), 10, 8)
	if err != nil {
		return errors.New("not a byte")
	}
	*n = uint8Num(v)
	return nil
}

// UnwrapKey answers keyprovider.KeyProviderService/UnWrapKey: the input is
// ocicrypt's key-provider protocol JSON with a CoCo annotation packet, the
// output carries the unwrapped private options. Layer decryption during a
// pull uses the same code.
func UnwrapKey(ctx context.Context, fetch Fetcher, input []byte) ([]byte, error) {
	var in keyProviderInput
	if err := json.Unmarshal(input, &in); err != nil {
		return nil, &Error{Code: CodeInvalid, Msg: "key-provider input is not JSON", Err: err}
	}
	if in.Op != "keyunwrap" {
		return nil, &Error{Code: CodeInvalid, Msg: fmt.Sprintf("key-provider op %q: UnWrapKey wants keyunwrap", in.Op)}
	}
	if len(in.KeyUnwrapParams.Annotation) == 0 {
		return nil, &Error{Code: CodeInvalid, Msg: "key-provider input has no keyunwrapparams.annotation"}
	}
	p, err := ParseAnnotationPacket(in.KeyUnwrapParams.Annotation)
	if err != nil {
		return nil, err
	}
	opts, err := unwrap(ctx, fetch, p)
	if err != nil {
		return nil, err
	}
	var out keyProviderOutput
	out.KeyUnwrapResults.OptsData = opts
	b, err := json.Marshal(out)
	clear(opts)
	if err != nil {
		return nil, errors.New("key-provider output: " + err.Error())
	}
	return b, nil
}
