package config

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"testing"
)

func TestInitDataDigest(t *testing.T) {
	for _, tc := range []struct {
		alg  string
		want func([]byte) []byte
	}{
		{"sha256", func(b []byte) []byte { h := sha256.Sum256(b); return h[:] }},
		{"sha384", func(b []byte) []byte { h := sha512.Sum384(b); return h[:] }},
		{"sha512", func(b []byte) []byte { h := sha512.Sum512(b); return h[:] }},
	} {
		doc := []byte("version = \"0.1.0\"\nalgorithm = \"" + tc.alg + "\"\n[data]\n")
		alg, d, err := InitDataDigest(doc)
		if err != nil || alg != tc.alg || hex.EncodeToString(d) != hex.EncodeToString(tc.want(doc)) {
			t.Errorf("%s: %s %x %v", tc.alg, alg, d, err)
		}
	}
	if _, _, err := InitDataDigest([]byte("algorithm = \"md5\"\n")); err == nil {
		t.Error("md5 accepted")
	}
}
