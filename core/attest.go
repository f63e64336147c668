package core

import (
	"context"
	"encoding/json"
)

// EvidenceFunc produces primary evidence for raw runtime data.
type EvidenceFunc func(ctx context.Context, runtimeData []byte) (json.RawMessage, error)

// TokenFunc returns the KBS token and the PEM private key of its TEE key.
type TokenFunc func(ctx context.Context) (token string, keyPEM []byte, err error)

// tokenAnswer is AA's GetToken("kbs") answer, also served at /aa/token.
type tokenAnswer struct {
	Token      string `json:"token"`
	TeeKeypair string `json:"tee_keypair"`
}

// TokenJSON is AA's GetToken("kbs") answer: {"token","tee_keypair"}.
func TokenJSON(ctx context.Context, token TokenFunc) ([]byte, error) {
	tok, key, err := token(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(tokenAnswer{tok, string(key)})
}

// ParseTokenJSON reads a TokenJSON answer.
func ParseTokenJSON(b []byte) (token string, keyPEM []byte, err error) {
	var t tokenAnswer
	if err := json.Unmarshal(b, &t); err != nil {
		return "", nil, err
	}
	return t.Token, []byte(t.TeeKeypair), nil
}
