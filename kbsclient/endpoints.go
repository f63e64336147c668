package kbsclient

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultFailbackAfter is how long an endpoint that stopped answering is
// passed over before the client tries it again.
const DefaultFailbackAfter = 60 * time.Second

// endpoint is one KBS base URL of the ordered list. Trustee has no HA
// protocol: every endpoint is assumed to be the same KBS (same policy, same
// resources), but tokens are per endpoint, since each KBS instance may
// sign with its own key.
type endpoint struct {
	base *url.URL
	name string // scheme://host[:port], for logs, metrics and errors (no secrets)

	downUntil time.Time // guarded by Client.mu: passed over until then

	handshakes, handshakeErrs, requests atomic.Uint64
}

func newEndpoints(raw []string) ([]*endpoint, error) {
	var eps []*endpoint
	seen := map[string]bool{}
	for _, r := range raw {
		if r == "" && len(eps) == 0 && len(raw) > 1 {
			continue // Config.URL may be empty when URLs carries the list
		}
		u, err := url.Parse(strings.TrimSuffix(r, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("KBS URL %q: want http(s)://host[:port]", r)
		}
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("KBS URL %q must not carry user info, query or fragment", r)
		}
		ep := &endpoint{base: u, name: u.Scheme + "://" + u.Host}
		if seen[u.String()] {
			return nil, fmt.Errorf("KBS URL %q is listed twice", r)
		}
		seen[u.String()] = true
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, errors.New("no KBS URL")
	}
	return eps, nil
}

// url is the endpoint's URL for "/kbs/v0/<suffix>".
func (ep *endpoint) url(suffix string) string {
	return ep.base.String() + "/kbs/v0/" + suffix
}

func (ep *endpoint) isDown(now time.Time) bool { return now.Before(ep.downUntil) }

// preferredLocked is the endpoint to attest with now: the first that is
// not passed over, else (all failed recently) the one whose pass-over ends
// first, so that a client with every KBS down still tries them in turn.
func (c *Client) preferredLocked(now time.Time) *endpoint {
	var best *endpoint
	for _, ep := range c.eps {
		if !ep.isDown(now) {
			return ep
		}
		if best == nil || ep.downUntil.Before(best.downUntil) {
			best = ep
		}
	}
	return best
}

// markDown passes ep over for FailbackAfter after it answered Unavailable
// (no connection, 5xx, a broken body), and drops idle connections so the
// next request dials afresh, resolving the host name again.
func (c *Client) markDown(ep *endpoint, cause error) {
	c.cfg.HTTPClient.CloseIdleConnections()
	if len(c.eps) < 2 {
		return // nowhere to move to: retry it, with the token it issued
	}
	c.mu.Lock()
	now := c.cfg.Now()
	wasPreferred := c.preferredLocked(now) == ep
	ep.downUntil = now.Add(c.cfg.FailbackAfter)
	next := c.preferredLocked(now)
	c.mu.Unlock()
	if wasPreferred && next != ep {
		c.failovers.Add(1)
		c.log.Warn("KBS unavailable; failing over", "kbs", ep.name, "next", next.name, "retry_after", c.cfg.FailbackAfter, "err", cause)
	}
}

// markUp notes that ep answered: it is no longer passed over.
func (c *Client) markUp(ep *endpoint) {
	if len(c.eps) < 2 {
		return
	}
	c.mu.Lock()
	ep.downUntil = time.Time{}
	c.mu.Unlock()
}

// failedOver reports whether, after a failure at the endpoint named
// failed, another endpoint is now the one to use.
func (c *Client) failedOver(failed string) bool {
	if len(c.eps) < 2 || failed == "" {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.preferredLocked(c.cfg.Now()).name != failed
}
