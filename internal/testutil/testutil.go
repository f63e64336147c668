// Package testutil holds the helpers tests across cdh-proxy share: one
// settable clock for components that take a Now func, and one bounded wait
// for conditions that live in another process (end-to-end tests). Tests of
// a single process wait with testing/synctest instead.
package testutil

import (
	"sync"
	"testing"
	"time"
)

// Clock is a settable clock: pass Now to a component's Config.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock at a fixed instant.
func NewClock() *Clock { return &Clock{t: time.Unix(1_700_000_000, 0)} }

// Now is the current fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Eventually waits until cond holds, checking every few milliseconds, and
// fails the test after timeout. It is for state in another process (a
// child's log line, a socket file, a metric): the timeout only bounds a
// broken run and never decides a passing one.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}
