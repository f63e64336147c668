package kbsclient

import (
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// decrypt opens a flattened-JSON JWE from the KBS. Only the key-management
// algorithm we advertised in our JWK and A256GCM are accepted, so a hostile
// KBS cannot steer us to another algorithm (spec "Resource response: JWE").
func (k *teeKey) decrypt(body []byte) ([]byte, error) {
	obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{k.jwe}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("parse JWE: %w", err)
	}
	plain, err := obj.Decrypt(k.priv)
	if err != nil {
		return nil, fmt.Errorf("decrypt JWE: %w", err)
	}
	return plain, nil
}
