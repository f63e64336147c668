package kbs

import (
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// tokenClaims is the part of an EAR token the KBS reads back.
type tokenClaims struct {
	jwt.Claims
	Submods map[string]struct {
		Evidence struct {
			RuntimeData struct {
				TeePubKey map[string]string `json:"tee-pubkey"`
			} `json:"runtime_data_claims"`
			Tee string `json:"tee"`
		} `json:"ear.veraison.annotated-evidence"`
	} `json:"submods"`
}

// issueToken signs an ES256 EAR-shaped token; the tee-pubkey sits at
// /submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey
// and the signer's JWK rides in the header, as Trustee does.
func (s *Server) issueToken(tee string, jwk map[string]string, evidenceClaims map[string]any) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.signKey},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	ttl := s.tokenTTL
	s.mu.Unlock()
	now := s.cfg.Now()
	claims := map[string]any{
		"eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
		"iat":         now.Unix(),
		"exp":         now.Add(ttl).Unix(),
		"submods": map[string]any{
			"cpu0": map[string]any{
				"ear.status": "affirming",
				"ear.veraison.annotated-evidence": map[string]any{
					"tee":                 tee,
					"evidence":            evidenceClaims,
					"runtime_data_claims": map[string]any{"tee-pubkey": jwk},
				},
			},
		},
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// verifyToken checks signature and exp (with Trustee's 60 s leeway) and
// returns the tee and tee-pubkey.
func (s *Server) verifyToken(raw string) (tee string, jwk map[string]string, err error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", nil, fmt.Errorf("parse token: %w", err)
	}
	var c tokenClaims
	if err := tok.Claims(&s.signKey.PublicKey, &c); err != nil {
		return "", nil, fmt.Errorf("token signature: %w", err)
	}
	if c.Expiry == nil {
		return "", nil, errors.New("token has no exp")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: s.cfg.Now().Add(s.protocolFaults().ClockSkew)}, tokenLeeway); err != nil {
		return "", nil, err
	}
	sub, ok := c.Submods["cpu0"]
	if !ok || sub.Evidence.RuntimeData.TeePubKey == nil {
		return "", nil, errors.New("token has no tee-pubkey claim")
	}
	return sub.Evidence.Tee, sub.Evidence.RuntimeData.TeePubKey, nil
}
