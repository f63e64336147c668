package kbsclient

import "context"

// The next handshake's TEE key is generated ahead of time — at New, after
// a failed handshake (for the retry), and once a token is half way through
// its life (for the proactive refresh at ~80 %) — so no handshake waits for
// key generation (RSA-2048 takes ~75 ms, P-521 ~1 ms in pure Go) and none
// runs beside a handshake or the requests that follow one.
// Every key is used for exactly one handshake, as before: this only moves
// generation off the request path.

// pendingKey is a key being made; done is closed once key or err is set.
type pendingKey struct {
	done chan struct{}
	key  *teeKey
	err  error
}

// prefetchKeyLocked starts making the next key unless one is ready or
// being made, or the client is closed. Called under c.mu.
func (c *Client) prefetchKeyLocked() {
	if c.cfg.DisableKeyPregeneration || c.nextKey != nil || c.closed {
		return
	}
	p := &pendingKey{done: make(chan struct{})}
	c.nextKey = p
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		p.key, p.err = newTEEKey(c.cfg.KeyAlgorithm)
		close(p.done)
	}()
}

// takeKey returns the key made ahead of time (waiting for it if it is
// still being made); without one it generates now. The handshake's end
// starts the next (startHandshakeLocked).
func (c *Client) takeKey(ctx context.Context) (*teeKey, error) {
	c.mu.Lock()
	p := c.nextKey
	c.nextKey = nil
	c.mu.Unlock()
	if p == nil {
		return newTEEKey(c.cfg.KeyAlgorithm)
	}
	select {
	case <-p.done:
		return p.key, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// KeyReady waits until the next handshake's key has been made ahead of
// time (at once when key pregeneration is disabled): for measuring the
// first handshake of a started client.
func (c *Client) KeyReady(ctx context.Context) error {
	c.mu.Lock()
	p := c.nextKey
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
