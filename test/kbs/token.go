package kbs

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// tokenClaims is the part of an EAR token the KBS reads back.
type tokenClaims struct {
	jwt.Claims
	Submods map[string]struct {
		Evidence map[string]json.RawMessage `json:"ear.veraison.annotated-evidence"`
	} `json:"submods"`
}

// grant is what a verified token lets the policy see.
type grant struct {
	tee    string
	jwk    map[string]string
	events []ccEvent // the tee's uefi_event_logs claim, if any
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
				// Trustee keys the verifier's claims by tee name.
				"ear.veraison.annotated-evidence": map[string]any{
					"tee":                 tee,
					tee:                   evidenceClaims,
					"runtime_data_claims": map[string]any{"tee-pubkey": jwk},
				},
			},
		},
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// verifyToken checks signature and exp (with Trustee's 60 s leeway) and
// returns what the token grants.
func (s *Server) verifyToken(raw string) (grant, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return grant{}, fmt.Errorf("parse token: %w", err)
	}
	var c tokenClaims
	if err := tok.Claims(&s.signKey.PublicKey, &c); err != nil {
		return grant{}, fmt.Errorf("token signature: %w", err)
	}
	if c.Expiry == nil {
		return grant{}, errors.New("token has no exp")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: s.cfg.Now().Add(s.protocolFaults().ClockSkew)}, tokenLeeway); err != nil {
		return grant{}, err
	}
	ev := c.Submods["cpu0"].Evidence
	var g grant
	var rt struct {
		TeePubKey map[string]string `json:"tee-pubkey"`
	}
	if json.Unmarshal(ev["tee"], &g.tee) != nil || json.Unmarshal(ev["runtime_data_claims"], &rt) != nil || rt.TeePubKey == nil {
		return grant{}, errors.New("token has no tee-pubkey claim")
	}
	g.jwk = rt.TeePubKey
	var teeClaims struct {
		Events []ccEvent `json:"uefi_event_logs"`
	}
	if raw, ok := ev[g.tee]; ok {
		if err := json.Unmarshal(raw, &teeClaims); err != nil {
			return grant{}, fmt.Errorf("token's %s claims: %w", g.tee, err)
		}
	}
	g.events = teeClaims.Events
	return g, nil
}
