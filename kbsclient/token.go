package kbsclient

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// tokenAlgs are the JWT signature algorithms we accept when reading a token's
// claims. We do not verify the signature (the KBS does); we only read exp/iat
// to schedule re-attestation (spec "Attestation").
var tokenAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512, jose.EdDSA}

// session is one successful handshake: the token and the key pair it names.
// Both are replaced together; a session value is immutable once built.
type session struct {
	ep        *endpoint // the KBS that issued token: the only one it is sent to
	token     string
	key       *teeKey
	obtained  time.Time // local clock
	expires   time.Time // local clock: obtained + (exp - iat)
	refreshAt time.Time // proactive refresh point
	measured  int64     // Config.Measured when the evidence was taken
}

func (s *session) String() string { return "[REDACTED session]" }

// tokenLifetime reads exp (required) and iat from the JWT. When iat is present
// the lifetime is exp-iat, which makes our schedule immune to clock skew
// between guest and KBS; otherwise it is exp minus our own clock.
func tokenLifetime(raw string, now time.Time) (time.Duration, error) {
	tok, err := jwt.ParseSigned(raw, tokenAlgs)
	if err != nil {
		return 0, fmt.Errorf("token is not a JWT: %w", err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return 0, fmt.Errorf("token claims: %w", err)
	}
	if c.Expiry == nil {
		return 0, errors.New("token has no exp claim")
	}
	exp := c.Expiry.Time()
	start := now
	if c.IssuedAt != nil {
		start = c.IssuedAt.Time()
	}
	life := exp.Sub(start)
	if life <= 0 {
		return 0, fmt.Errorf("token already expired (lifetime %s)", life)
	}
	return life, nil
}

// refreshPoint returns when to refresh a token obtained at obtained with the
// given lifetime: at 80 % ± 10 % of its life, r ∈ [0,1) choosing the point.
// Pure so tests can pin it (cf. go-tpm-tools getNextRefreshFromExpiration).
func refreshPoint(obtained time.Time, life time.Duration, r float64) time.Time {
	frac := 0.7 + 0.2*r
	return obtained.Add(time.Duration(float64(life) * frac))
}

// expiryMargin is how long before expiry a token stops being used at all: a
// request in flight must not reach the KBS with a token that just expired.
func expiryMargin(life time.Duration) time.Duration {
	return min(life/20, 5*time.Second)
}

// usable reports whether s may still be sent.
func (s *session) usable(now time.Time) bool {
	return s != nil && now.Before(s.expires.Add(-expiryMargin(s.expires.Sub(s.obtained))))
}

// needsRefresh reports whether a background refresh should start.
func (s *session) needsRefresh(now time.Time) bool {
	return s == nil || !now.Before(s.refreshAt)
}

// pastHalfLife reports whether half the token's life is gone: time to make
// the key of the refresh that comes at ~80 %, well away from the handshake
// and the requests that just used the CPU.
func (s *session) pastHalfLife(now time.Time) bool {
	return !now.Before(s.obtained.Add(s.expires.Sub(s.obtained) / 2))
}
