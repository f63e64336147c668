package imagepull

import (
	"context"
	"encoding/base64"
	"testing"
)

// FuzzAnnotationPacket: any packet bytes, through the key provider and the
// layer annotation path, give a typed error or options, never a panic, and
// never a key fetch for a packet that is not well-formed.
func FuzzAnnotationPacket(f *testing.F) {
	f.Add([]byte(`{"kid":"kbs:///default/key/1","wrapped_data":"AAAA","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}`))
	f.Add([]byte(`{"version":"0.1.0","provider":"kbs","kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"AA==","provider_settings":{},"annotations":{}}`))
	f.Add([]byte(`{"provider":"aliyun","kid":"x"}`))
	f.Add([]byte(`{"kid":"kbs:///a/b/c","wrapped_data":"","iv":""}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, packet []byte) {
		kbs := newFakeKBS(map[string][]byte{"kbs:///default/key/1": make([]byte, 32), "kbs:///a/b/c": make([]byte, 16)})
		p, perr := ParseAnnotationPacket(packet)
		if perr == nil && (p.Provider != "kbs" || p.WrapType != wrapA256GCM || p.KID == "" || p.IV == "" || p.WrappedData == "") {
			t.Fatalf("accepted a packet that cannot be unwrapped: %+v", p)
		}
		_, err := unwrapAnnotation(context.Background(), kbs, base64.StdEncoding.EncodeToString(packet))
		if err == nil {
			t.Fatal("random packet unwrapped")
		}
		if codeOf(err) == CodeInternal {
			t.Fatalf("untyped error %v", err)
		}
		if perr != nil && len(kbs.calls) != 0 {
			t.Fatalf("fetched %v for a malformed packet", kbs.calls)
		}
	})
}

// FuzzPolicy: a policy document from the KBS, after kbs:/// keys are
// inlined, parses or fails with an error; it never panics and never
// fetches anything but kbs:/// keyPaths.
func FuzzPolicy(f *testing.F) {
	f.Add([]byte(`{"default":[{"type":"insecureAcceptAnything"}]}`))
	f.Add([]byte(`{"default":[{"type":"reject"}],"transports":{"docker":{"r.test/a":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/k/1"}]}}}`))
	f.Add([]byte(`{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///default/k/2","signedIdentity":{"type":"matchRepository"}}]}`))
	f.Add([]byte(`{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"AAAA"}]}`))
	f.Add([]byte(`{"default":[],"transports":{"docker":{"":[{"type":"reject"}]}}}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		kbs := newFakeKBS(map[string][]byte{"kbs:///default/k/1": []byte("not a key"), "kbs:///default/k/2": []byte("-----BEGIN PUBLIC KEY-----\n")})
		raw, err := inlineKBSKeys(context.Background(), kbs, doc)
		if err != nil {
			if codeOf(err) == CodeInternal {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for uri := range kbs.calls {
			if len(uri) < 7 || uri[:7] != "kbs:///" {
				t.Fatalf("fetched %q", uri)
			}
		}
		pol, err := ParsePolicy(raw)
		if err == nil && pol == nil {
			t.Fatal("nil policy without an error")
		}
	})
}
